"""The operator's side of the evaluation pod's hand-over (the pod side is `tuneloop_trainer.publish`).

The message format and the report framing are the contract's (`tuneloop.contract.termination`);
these names stay for the reconciler's imports.
"""

from tuneloop.contract.termination import REPORT_BEGIN as BEGIN
from tuneloop.contract.termination import REPORT_END as END
from tuneloop.contract.termination import REPORT_MARKER as MARKER
from tuneloop.contract.termination import TERMINATION_LIMIT as LIMIT
from tuneloop.contract.termination import extract_report
from tuneloop.contract.termination import fit_publish as fit

__all__ = ["BEGIN", "END", "LIMIT", "MARKER", "extract_report", "fit"]
