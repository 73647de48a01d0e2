"""Edit requests from a YAML or CSV file, or inline, for ``python -m edit_bench fit``."""

from __future__ import annotations

from ..types import EditRequest
from .base import EditData, read_csv, resolve_path
from ..errors import UsageError


class EditRequests(EditData):
    """Requests to apply together.

    Args:
        path: a YAML file ``{requests: [{source, target, subject?}], preserve: [...]}`` or a CSV with
            columns ``source,target[,subject]``.
        requests: inline requests (instead of, or added to, ``path``).
        preserve: prompts whose renderings the edit should keep (methods with a preserve term).
        truncate_long_prompts: prompts over 77 tokens are an error unless this is true, when they are
            truncated to 77 tokens as Stable Diffusion's pipelines do.
    """

    def __init__(self, path: str | None = None, requests: list[dict] | None = None, preserve: list[str] | None = None,
                 truncate_long_prompts: bool = False):
        super().__init__()
        self.save_hyperparameters()  # its arguments, as every data module's, in the provenance
        self.path = path
        self.truncate_long_prompts = truncate_long_prompts
        items = list(requests or [])
        self._preserve = list(preserve or [])
        if path is not None:
            p = resolve_path(path)
            if p.suffix.lower() == ".csv":
                rows = read_csv(p, ["source", "target"], optional=("subject",))
                items += [{**r, "_where": f"{p}: line {i + 2}"} for i, r in enumerate(rows)]
            else:
                import yaml

                doc = yaml.safe_load(p.read_text()) or {}
                if not isinstance(doc, dict) or "requests" not in doc:
                    raise UsageError(f"{p}: expected a mapping with a 'requests' list (and optionally 'preserve')")
                items += doc["requests"]
                self._preserve += list(doc.get("preserve") or [])
        if not items:
            raise UsageError("no edit requests: give --data.path FILE (YAML or CSV) or --data.requests")
        self._requests = []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or "source" not in it or "target" not in it:
                raise UsageError(f"request {i}: {it!r} needs 'source' and 'target'")
            try:
                self._requests.append(EditRequest(it["source"], it["target"], it.get("subject") or None))
            except ValueError as e:
                raise UsageError(f"{it.get('_where', f'request {i}')}: {e}") from None

    def requests(self):
        return list(self._requests)

    def preserve(self):
        return list(self._preserve)
