"""`--watch`: pass after pass every `interval` seconds, so exports written later are picked up."""

from __future__ import annotations

import logging
import threading

from clef_platform.evaluate.passes import EvalConfig, PassSummary, evaluate_pass

log = logging.getLogger(__name__)


def watch(cfg: EvalConfig, interval: float, metrics=None, max_passes: int | None = None,
          stop: threading.Event | None = None) -> list[PassSummary]:
    """A pass that raises is logged and the loop goes on: a long-lived evaluator outlives a bad
    object or an unreachable store."""
    stop = stop or threading.Event()
    done: list[PassSummary] = []
    while not stop.is_set():
        try:
            done.append(evaluate_pass(cfg, metrics))
        except Exception:
            log.exception("evaluation pass over %s failed; next in %.0fs", cfg.run_url, interval)
            done.append(PassSummary(failed=[("*", "*", "pass failed")]))
        if max_passes is not None and len(done) >= max_passes:
            break
        stop.wait(interval)
    return done
