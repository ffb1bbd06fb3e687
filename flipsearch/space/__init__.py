"""Search spaces of privileged contexts, read from YAML as data only.

A space is either a *grammar* (slots of options joined by a template; the paper's
five axes, arXiv 2605.15239, become slots) or a *list* of hand-written candidates.
Files are parsed with ``yaml.safe_load`` and rendered by a tiny renderer that only
substitutes ``{slot}`` names, so a space file can never run code. The grammar is
documented in ``flipsearch/search_spaces/README.md``. The built-in spaces ship inside the
package and are read through :mod:`importlib.resources`, so a bare name (``"paper_axes"``)
works from any folder once the package is installed.

Example:
    >>> space = SearchSpace.from_dict({
    ...     "name": "demo",
    ...     "slots": {
    ...         "strength": [{"id": "should", "text": "You should refuse"},
    ...                      {"id": "must", "text": "You must refuse"}],
    ...         "scope": [{"id": "harm", "text": "harmful requests."}],
    ...         "cue": ["", "First decide whether the request is harmful."],
    ...     },
    ...     "template": "{strength} {scope} {cue}",
    ... })
    >>> space.size, space.dimensions()["cue"]
    (4, ['none', 'first-decide-whether-the-2dc040'])
    >>> space.render({"strength": "must", "scope": "harm", "cue": "none"}).text
    'You must refuse harmful requests.'
    >>> space.enumerate()[0].id
    'strength=should|scope=harm|cue=none@85e51902'
"""

from flipsearch.space._builtin import (
    SEARCH_SPACES_DIR,
    BuiltinSpace,
    builtin_spaces,
    load_search_space,
)
from flipsearch.space._space import DEFAULT_ENUMERATE_LIMIT, SearchSpace
from flipsearch.space._types import Candidate, Option, Slot, candidate_id, normalise_whitespace

__all__ = [
    "DEFAULT_ENUMERATE_LIMIT",
    "SEARCH_SPACES_DIR",
    "BuiltinSpace",
    "Candidate",
    "Option",
    "SearchSpace",
    "Slot",
    "builtin_spaces",
    "candidate_id",
    "load_search_space",
    "normalise_whitespace",
]
