"""Bodies of the ingress's read routes over the replica's caches (``raysae.serve.reads``): a dictionary,
a page of its features, one feature, features by DLA token.

Pages, token searches and features are ``async``: when what they need is cached and fresh they answer
on the event loop without a store call or a thread hop; otherwise the blocking store reads run in
FastAPI's thread pool. A dictionary over ``page_cache_features`` is paged by the store, as before.
"""

from typing import Any

from fastapi import HTTPException, Response
from fastapi.concurrency import run_in_threadpool

from raysae.serve.http import public_dictionary, store_call, summary
from raysae.serve.reads import FeatureTable, ReadCache, json_response, page_body
from raysae.store import validate as v


class ReadRoutes:
    """What the read routes of ``FeatureAPI`` do; ``api`` gives the store, the caches and the checks."""

    def __init__(self, api: Any):
        self.api = api
        self.store = api.store
        self.reads: ReadCache = api.reads

    async def _table(self, dictionary_id: str) -> FeatureTable | None:
        """The dictionary's table (404 when there is no such dictionary; None: paged by the store)."""
        table = self.reads.fresh_table(dictionary_id)
        if table is not None:
            return table
        return await run_in_threadpool(self._load_table, dictionary_id)

    def _load_table(self, dictionary_id: str) -> FeatureTable | None:
        return store_call(self.reads.table, self.api._dictionary(dictionary_id))

    def dictionary(self, dictionary_id: str) -> dict[str, Any]:
        doc = self.api._dictionary(dictionary_id)
        table = store_call(self.reads.table, doc)  # what its pages show; a count scans on some stores
        n = len(table) if table is not None else store_call(self.store.count_features, dictionary_id)
        return {**public_dictionary(doc), "stored_features": n}

    async def page(
        self, dictionary_id: str, hook: str | None, sort_by: str, order: str, start: int, n: int
    ) -> Any:
        hook = store_call(v.as_optional_id, hook, "hook")
        table = await self._table(dictionary_id)
        descending = order == "desc"
        if table is None:
            docs = await run_in_threadpool(
                store_call,
                self.store.page_features,
                dictionary_id,
                hook,
                sort_by=sort_by,
                descending=descending,
                skip=start,
                limit=n,
                summary=True,
            )
            total = await run_in_threadpool(store_call, self.store.count_features, dictionary_id, hook)
        else:  # the replica's copy of this analysis: sorted and counted in memory
            total = table.count(hook)
        head = {
            "dictionary_id": dictionary_id,
            "hook": hook,
            "sort_by": sort_by,
            "order": order,
            "total": total,
            "skip": start,
            "limit": n,
            "next_skip": start + n if start + n < total else None,
        }
        if table is None:
            return {**head, "items": [summary(d) for d in docs]}
        return json_response(page_body(head, table.page(hook, sort_by, descending, start, n)))

    async def feature(self, dictionary_id: str, hook: str, index: int) -> Response:
        body = self.reads.cached_feature(dictionary_id, hook, index)
        if body is None:
            body = await run_in_threadpool(self._feature, dictionary_id, hook, index)
        return json_response(body)

    def _feature(self, dictionary_id: str, hook: str, index: int) -> bytes:
        record = store_call(self.reads.record, dictionary_id)
        body = store_call(self.reads.feature, record, dictionary_id, hook, index)
        if body is None:
            raise HTTPException(404, missing_feature(record, dictionary_id, hook, index))
        return body[:-1] + store_call(self.reads.notes, dictionary_id, hook, index) + b"}"

    async def by_token(self, token: str, dictionary_id: str | None, hook: str | None, n: int) -> Any:
        if dictionary_id is not None:
            table = await self._table(dictionary_id)
            if table is not None:
                token, hook = store_call(lambda: (v.as_text(token, "token"), v.as_optional_id(hook, "hook")))
                return json_response(page_body({}, table.by_token(token, hook, n)))
        docs = await run_in_threadpool(
            store_call,
            self.store.find_features_by_token,
            token,
            dictionary_id=dictionary_id,
            hook=hook,
            limit=n,
            summary=True,
        )
        return {"items": [summary(d) for d in docs]}


def missing_feature(record: dict[str, Any] | None, dictionary_id: str, hook: str, index: int) -> str:
    """Why a feature has no document: no such dictionary, index past d_sae, unknown hook, or not stored."""
    if record is None:
        return f"dictionary {dictionary_id!r} not found"
    d_sae = record.get("d_sae")
    if isinstance(d_sae, int) and index >= d_sae:
        return f"index {index} is out of range: {dictionary_id!r} has d_sae={d_sae}"
    hooks = record.get("hooks") or record.get("hooks_in")  # "hooks": the stored hook values
    if isinstance(hooks, list) and hooks and hook not in hooks:
        return f"hook {hook!r} is not one of {dictionary_id!r}'s hooks {hooks}"
    return f"feature {index} of {hook!r} in {dictionary_id!r} has no stored record"
