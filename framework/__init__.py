"""instruct-framework: distributed instruction tuning. The module map: ARCHITECTURE.md."""

import logging


def _not_the_cpu_fallback(record: logging.LogRecord) -> bool:
    # DeepSpeed logs this at import on every machine without CUDA, the first line of every
    # command and of every Ray worker's output; our own lines say CPU or GPU. A machine with
    # CUDA never logs it, so dropping it changes no choice of accelerator.
    return not record.getMessage().startswith("Setting accelerator to CPU.")


# Before deepspeed is imported (its logger is this one, found by name): every process that
# imports the framework (drivers, Ray workers) has it.
logging.getLogger("DeepSpeed").addFilter(_not_the_cpu_fallback)
