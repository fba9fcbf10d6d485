"""``provisioner worker`` as the tests run it (``WorkerPool``): the product's own command and
code, with one wait shortened that tests would otherwise sit out again and again.

A group whose members are still being provisioned is deferred and looks again after
``worker.sync.groups.MEMBER_RECHECK`` seconds (2 s); a member that is done does not wake it.
Nearly every end-to-end test provisions a group with its members, so each would wait up to
2 s for nothing: the test workers look again after ``TEST_MEMBER_RECHECK`` seconds (0.25 s, the
sweeper's interval). Only how often a deferred group looks is changed, not what it does
(``test_efficiency_e2e`` counts its calls). ``TEST_MEMBER_RECHECK=2`` runs the product's value.

Usage: ``python -m tests.support.worker_process worker --pool threads ...`` (the arguments of
``provisioner``).
"""

from __future__ import annotations

import os
import sys

from worker.sync import groups

MEMBER_RECHECK = float(os.environ.get("TEST_MEMBER_RECHECK", "0.25"))


def main() -> int:
    if not hasattr(groups, "MEMBER_RECHECK"):  # renamed: say so rather than wait 2 s unseen
        raise SystemExit("tests/support/worker_process.py: worker.sync.groups.MEMBER_RECHECK moved")
    groups.MEMBER_RECHECK = MEMBER_RECHECK
    from worker.cli.main import main as provisioner

    return provisioner(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
