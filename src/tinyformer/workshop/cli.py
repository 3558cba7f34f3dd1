"""``tinyformer workshop ...``: student copies of the notebooks, nbgrader courses, one vLLM server for the room.

Plugged into the ``tinyformer`` command through ``COMMAND`` (listed in tinyformer.cli.SUBCOMMANDS);
``python -m tinyformer.workshop ...`` runs the same command on its own.
Heavy imports (torch, vLLM) happen inside the subcommands, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyformer.command import Command, non_negative_float, port_number, positive_float, positive_int
from tinyformer.serving.cli import add_key_file_argument


def add_source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", type=Path, default=Path("notebooks"), help="the instructor notebooks (default: notebooks)"
    )


def add_workshop_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="workshop_command", title="workshop commands", metavar="WHAT", required=True)

    student = sub.add_parser(
        "student-notebooks",
        help="write student copies of the notebooks (solutions replaced by exercise stubs)",
        description="Copy every notebook, replacing each cell tagged `solution` by an exercise stub (its prompt,\n"
        "the function's signature and docstring, `raise NotImplementedError`) and stripping all outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    student.add_argument("out", type=Path, metavar="OUT", help="folder to write the student notebooks into")
    add_source_argument(student)

    marks = sub.add_parser(
        "nbgrader-metadata",
        help="write nbgrader's cell metadata into the instructor notebooks (from the `solution` tags)",
        description="Give every notebook nbgrader's own metadata: ### BEGIN/END SOLUTION around each exercise's\n"
        "body, its checker cell graded and locked, prose read-only. Idempotent; run it after adding an exercise.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_argument(marks)
    marks.add_argument("--check", action="store_true", help="change nothing; fail if a notebook is out of date")

    course = sub.add_parser(
        "nbgrader-course",
        help="set up an nbgrader course folder: one assignment per lesson, and its nbgrader_config.py",
        description="Write DIR/source/<lesson>/<lesson>.ipynb for every notebook and DIR/nbgrader_config.py (kept\n"
        "if it exists). DIR holds the solutions and the gradebook: it is made owner-only. A source notebook\n"
        "edited since the last run stops the run (--discard-edits replaces it). Then, in DIR: nbgrader\n"
        "generate_assignment --assignment='*', autograde, generate_feedback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    course.add_argument("course_dir", type=Path, metavar="DIR", help="the course folder (created if missing)")
    add_source_argument(course)
    course.add_argument("--course-id", default="tinyformer", help="nbgrader's course id (default: tinyformer)")
    course.add_argument(
        "--discard-edits",
        action="store_true",
        help="replace source notebooks edited since this command wrote them (without it, such edits stop the run)",
    )

    serve = sub.add_parser(
        "serve",
        help="start one vLLM server for the class, sized for its learners, with an API key and a status line",
        description="Start a real vLLM server on an exported model with a KV cache sized for the class, print the\n"
        "two environment variables learners set, then a live status line read from /metrics until Ctrl-C.",
        epilog="examples:\n"
        "  tinyformer workshop serve artifacts/nano-hf --learners 30 --tokens-per-request 64\n"
        "  tinyformer workshop serve artifacts/nano-hf --public --port 8000   # reachable from the room's network",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # no `--api-key KEY` passing for --api-key-file
    )
    serve.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a folder written by `tinyformer export`")
    serve.add_argument("--learners", type=positive_int, default=30, help="learners sending at once (default 30)")
    serve.add_argument(
        "--tokens-per-request",
        type=positive_int,
        default=None,
        metavar="T",
        help="prompt + output tokens of one learner's request (default: max_model_len)",
    )
    serve.add_argument("--max-model-len", type=positive_int, metavar="N", help="default: the model's n_positions")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    where.add_argument(
        "--public", action="store_true", help="listen on every network interface (0.0.0.0) so learners can connect"
    )
    serve.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--guard-every-route",
        action="store_true",
        help="ask for the key on every route but GET /health on loopback too (--public always does): on a "
        "machine many people log in to, such as a JupyterHub, every user reaches 127.0.0.1",
    )
    add_key_file_argument(serve, "the key learners must send (default: a new random one)")
    serve.add_argument(
        "--reserve-gib",
        type=non_negative_float,
        default=2.0,
        metavar="G",
        help="memory kept free for vLLM itself beyond weights and KV cache (default 2)",
    )
    serve.add_argument(
        "--status-every", type=positive_float, default=2.0, metavar="S", help="seconds between status updates"
    )
    serve.add_argument(
        "--timeout", type=positive_float, default=300.0, help="seconds to wait for the server (default 300)"
    )


def run_workshop(args: argparse.Namespace) -> int:
    if args.workshop_command == "student-notebooks":
        return _run_student_notebooks(args)
    if args.workshop_command == "nbgrader-metadata":
        return _run_nbgrader_metadata(args)
    if args.workshop_command == "nbgrader-course":
        return _run_nbgrader_course(args)
    from tinyformer.workshop.classroom import run_class_server

    return run_class_server(args)


def _run_student_notebooks(args: argparse.Namespace) -> int:
    from tinyformer.workshop.student import timed_build

    copies, seconds = timed_build(args.source, args.out)
    for copy in copies:
        print(f"{copy.target}  ({copy.exercises} exercise{'s' if copy.exercises != 1 else ''})")
    total = sum(c.exercises for c in copies)
    print(f"wrote {len(copies)} student notebooks with {total} exercises in {seconds:.2f} s")
    return 0


def _run_nbgrader_metadata(args: argparse.Namespace) -> int:
    from tinyformer.workshop.nbgrader_meta import mark_notebooks

    changed = mark_notebooks(args.source, check=args.check)
    for path in changed:
        print(f"{path}: {'out of date' if args.check else 'updated'}")
    if args.check and changed:
        print("run `tinyformer workshop nbgrader-metadata` to update them")
        return 1
    print(f"{len(changed)} notebook{'s' if len(changed) != 1 else ''} {'out of date' if args.check else 'changed'}")
    return 0


def _run_nbgrader_course(args: argparse.Namespace) -> int:
    from tinyformer.workshop.nbgrader_course import CONFIG_NAME, grades_in_class_artifacts, write_course

    written = write_course(args.course_dir, args.source, args.course_id, discard_edits=args.discard_edits)
    print(f"{len(written)} assignments under {args.course_dir / 'source'}; settings in {args.course_dir / CONFIG_NAME}")
    if grades_in_class_artifacts(args.course_dir):
        print(
            f"warning: {args.course_dir / CONFIG_NAME} predates grading in a scratch copy: autograding would write "
            "into the class's artifacts (lesson 04 replaces nano.pt). Move it aside and run this command again to "
            "get the new one, then copy your own settings back.",
            file=sys.stderr,
        )
    print(f"next: cd {args.course_dir} && nbgrader generate_assignment --assignment='*'   (docs/workshop.md)")
    return 0


COMMAND = Command(
    name="workshop",
    summary="run a workshop: student copies of the notebooks, one vLLM server for the room",
    description=(
        "Tools for an instructor: `student-notebooks OUT` writes the notebooks with their exercise\n"
        "solutions removed; `nbgrader-course DIR` sets up an nbgrader course of the lessons;\n"
        "`serve MODEL_DIR` starts one vLLM server sized for the class."
    ),
    epilog=(
        "examples:\n"
        "  tinyformer workshop student-notebooks artifacts/student-notebooks\n"
        "  tinyformer workshop nbgrader-course artifacts/course\n"
        "  tinyformer workshop serve artifacts/nano-hf --learners 30 --public"
    ),
    add_arguments=add_workshop_arguments,
    run=run_workshop,
)
