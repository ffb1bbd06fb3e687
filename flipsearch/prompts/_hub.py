"""Read a Hugging Face hub dataset (``hf:owner/name[:config][@split]``) as table records."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flipsearch.errors import PromptSetError
from flipsearch.prompts._files import Record

_SPEC = re.compile(
    r"^hf:(?P<repo>[\w.\-]+/[\w.\-]+)(?::(?P<config>[\w.\-]+))?(?:@(?P<split>[\w.\-]+))?$"
)


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf:`` spec.

    Example:
        >>> HubSpec.parse("hf:openai/gsm8k:main@test")
        HubSpec(repo='openai/gsm8k', config='main', split='test')
    """

    repo: str
    config: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, spec: str) -> HubSpec:
        m = _SPEC.match(spec)
        if not m:
            raise PromptSetError(
                f"`spec` must look like 'hf:owner/name[:config][@split]', got {spec!r}"
            )
        return cls(m["repo"], m["config"], m["split"])

    def __str__(self) -> str:
        config = f":{self.config}" if self.config else ""
        split = f"@{self.split}" if self.split else ""
        return f"hf:{self.repo}{config}{split}"


LOAD_OPTIONS: dict[str, dict[str, object]] = {
    "allenai/wildjailbreak": {"delimiter": "\t", "keep_default_na": False},
}
"""Repo -> extra ``load_dataset`` arguments its files need (WildJailbreak's are TSV)."""


def read_hub_records(spec: HubSpec) -> tuple[list[Record], list[str]]:
    """Load one split of a hub dataset through ``datasets.load_dataset``.

    Without ``@split`` the dataset must have exactly one split. Repos of
    :data:`LOAD_OPTIONS` get their extra arguments.

    Raises:
        PromptSetError: the hub is unreachable and the dataset is not cached, the
            dataset or split does not exist, or no split was given and there are several.
    """
    try:
        from datasets import load_dataset

        options = LOAD_OPTIONS.get(spec.repo, {})
        data = load_dataset(spec.repo, spec.config, split=spec.split, **options)
    except ConnectionError as e:  # datasets raises ConnectionError offline / on DNS failure
        raise PromptSetError(
            f"`spec` {str(spec)!r} must be reachable: the Hugging Face hub is unreachable and "
            f"the dataset is not in the local cache ({e}). Use a local file or the shared data "
            "folder ($FLIPSEARCH_SHARED_DATA) instead."
        ) from e
    except Exception as e:  # unknown repo/config/split: datasets raises several types
        raise PromptSetError(f"`spec` {str(spec)!r} must name a loadable hub dataset: {e}") from e
    if spec.split is None:
        splits = list(data)  # a DatasetDict
        if len(splits) != 1:
            raise PromptSetError(
                f"`spec` {str(spec)!r} must name a split (append '@<split>'), got none; "
                f"available splits: {splits!r}"
            )
        data = data[splits[0]]
    return data.to_list(), list(data.column_names)
