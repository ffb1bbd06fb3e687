"""``flipsearch spaces``: the built-in search spaces (usable by bare name in ``--space``).

Example::

    flipsearch spaces
    # name        form     contexts  file (inside the installed package)
    # paper_axes  grammar  324       flipsearch/search_spaces/paper_axes.yaml
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "spaces",
        help="list the built-in search spaces",
        description=__doc__.splitlines()[0],
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.space import builtin_spaces

    rows = [("name", "form", "contexts", "file (inside the installed package)")]
    for name, builtin in builtin_spaces().items():
        space = builtin.load()  # size is a product of option counts: no enumeration
        form = "grammar" if space.is_grammar else "list"
        rows.append((name, form, str(space.size), builtin.resource))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0
