"""The test kit's conformance suite: the built-in ERM passes it, and each of its checks
catches the broken method it is there to catch."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.specs import MitigationSpec
from spurcore.testing import mitigation_conformance

TestERM = mitigation_conformance("erm")

pytest_plugins = ["pytester"]


class Counting:
    """Scales its loss by 1 / (1 + batches seen): state that lives in the stage object."""

    def __init__(self, options):
        self.seen = 0

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        self.seen += 1
        return F.cross_entropy(model(batch.x, index=batch.index), batch.y) / (1 + 0.1 * self.seen)


class CountingSaved(Counting):
    """The same, with its state in every checkpoint (the stage-object state contract)."""

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class Registers:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="counting-saved", factory=CountingSaved, description="test method")]


TestStateInCheckpoints = mitigation_conformance("counting-saved", plugin=Registers())

BROKEN = '''
import numpy as np
import torch.nn.functional as F
from spurcore import hookimpl
from spurcore.specs import MitigationSpec
from spurcore.testing import mitigation_conformance
from test_conformance import Counting


class Peeks:
    """Declares no attribute labels, then up-weights the examples whose attribute disagrees."""

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        losses = F.cross_entropy(model(batch.x, index=batch.index), batch.y, reduction="none")
        return (losses * (1 + (batch.a != batch.y).float())).mean()


class Unseeded:
    """Reads no attribute labels, but scales its loss by a draw from an unseeded generator."""

    def __init__(self, options):
        self.rng = np.random.default_rng()

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return F.cross_entropy(model(batch.x, index=batch.index), batch.y) * (0.5 + self.rng.random())


class Registers:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="peeks", factory=Peeks, description="reads a"),
                MitigationSpec(name="counting", factory=Counting, description="forgets on resume"),
                MitigationSpec(name="unseeded", factory=Unseeded, description="draws from fresh entropy")]


TestPeeks = mitigation_conformance("peeks", plugin=Registers())
TestCounting = mitigation_conformance("counting", plugin=Registers())
TestUnseeded = mitigation_conformance("unseeded", plugin=Registers())
'''


def test_each_check_catches_the_method_that_breaks_its_promise(pytester):
    pytester.syspathinsert(str(Path(__file__).parent))
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest_inprocess(
        "-q", "-p", "no:cacheprovider", "-k", "TestPeeks and attribute_labels_only or TestCounting and resumes "
        "or TestUnseeded and (deterministic or attribute_labels_only or resumes)")
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines([
        "*'peeks' declares attribute labels only on no split, but its weights change when*carry none*",
        "*'counting': the resumed run's summary differs from the uninterrupted one*",
    ])
    # a method that is merely random is called that, not a reader of attribute labels or a bad resumer
    unseeded = [line for line in result.stdout.lines if "'unseeded'" in line and line.startswith("E ")]
    assert len([line for line in unseeded if "'unseeded' is not deterministic" in line]) == 3, unseeded
    assert not [line for line in unseeded if "reads them" in line or "resumed" in line], unseeded
