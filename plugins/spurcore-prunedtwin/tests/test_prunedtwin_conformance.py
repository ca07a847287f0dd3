"""Pruned-twin fine-tuning against the mitigation contract (spurcore.testing)."""

import spurcore_prunedtwin
from spurcore.testing import mitigation_conformance

TestConformance = mitigation_conformance("prunedtwin", plugin=spurcore_prunedtwin, options={"projection_dim": 8})
