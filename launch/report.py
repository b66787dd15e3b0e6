"""Report: one self-contained HTML page (no network, no script needed) of one run or of
several side by side, its path printed. Training writes RUN_DIR/report.html itself, at each
checkpoint and at the end; this command redraws it, or compares runs.

python launch/report.py outputs/sft                         # -> outputs/sft/report.html
python launch/report.py outputs/lora outputs/full --out lora_vs_full.html
"""

from __future__ import annotations

import argparse

from framework.commands.cli import exit_on_user_error
from framework.report.page import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run.output_dir")
    parser.add_argument(
        "--out",
        help="the HTML file to write; default: report.html in the run directory (one run) "
        "or report.html here (several)",
    )
    args = parser.parse_args()
    out = args.out or (None if len(args.run_dirs) == 1 else "report.html")
    with exit_on_user_error():
        print(write_report(args.run_dirs, out))


if __name__ == "__main__":
    main()
