"""Every baseline against the mitigation contract (spurcore.testing.mitigation_conformance): it
trains, is deterministic, reads attribute labels only where its spec says, is refused without
them, resumes exactly and composes with a following last-layer stage."""

from __future__ import annotations

import spurcore_baselines
from spurcore.testing import mitigation_conformance

ERM_FIRST = [{"method": "erm", "train": {"epochs": 1}}]  # what the last-layer retraining continues


def conformance(method: str, **kwargs) -> type:
    return mitigation_conformance(method, plugin=spurcore_baselines, **kwargs)


TestResample = conformance("resample")
TestResampleClass = conformance("resample-class")
TestSubg = conformance("subg")
TestSuby = conformance("suby")
TestReweight = conformance("reweight")
TestReweightClass = conformance("reweight-class")
TestSqrtReweight = conformance("sqrt-reweight")
TestCBLoss = conformance("cbloss")
TestFocal = conformance("focal")
TestLDAM = conformance("ldam")  # 2 epochs: margins alone in the first, re-weighted in the second
TestBSoftmax = conformance("bsoftmax")
TestCVaRDRO = conformance("cvar-dro")
TestMixup = conformance("mixup")
TestLISA = conformance("lisa")
TestIRM = conformance("irm", options={"anneal_steps": 5})  # the penalty's full weight from step 6 on
TestCORAL = conformance("coral")
TestMMD = conformance("mmd")
TestCRT = conformance("crt", before=ERM_FIRST)
TestCRTClass = conformance("crt-class", before=ERM_FIRST)
TestReweightCRT = conformance("reweight-crt", before=ERM_FIRST)
TestAFR = conformance("afr", options={"gamma": 4.0, "reg": 0.1})
TestEIIL = conformance("eiil", before=ERM_FIRST, options={"steps": 200, "lr": 0.01})
