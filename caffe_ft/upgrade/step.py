"""One fallible step of Caffe's UpgradeNetAsNeeded / UpgradeSolverAsNeeded:
log the attempt, run the upgrade, log its success or its failure. The words
are each step's own (Caffe's log lines, irregular as they are), so the
caller passes them in."""
from __future__ import annotations

from collections.abc import Callable

from caffe_ft.glog import logger


def run_upgrade_step(attempt: str, source: str, upgrade: Callable[[], bool], succeeded: str,
                     failed: str) -> bool:
    """True if `upgrade()` succeeded; a failure is logged, not raised, as in
    Caffe, which goes on with what could be upgraded."""
    logger.info("%s: %s", attempt, source)
    if upgrade():
        logger.info(succeeded)
        return True
    logger.error(failed)
    return False
