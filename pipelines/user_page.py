"""A small read-only web page to look up one user: their list for a ds, their recent history, and which model
and version produced the list; beside it, each night's report (/reports/<ds>). `make app` serves it on
127.0.0.1 (FastAPI and uvicorn, which Airflow already brings; no page needs JavaScript)."""

from __future__ import annotations

import html
from datetime import date

import pandas as pd
from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse

from configs.schema import Config
from pipelines.user_lookup import user_lookup
from tasks.report import find_report
from tasks.storage.address_book import AddressBook

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}table{border-collapse:collapse}
td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}.muted{color:#666}"""


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>recsys: user lookup</title>"
                        f"<style>{STYLE}</style></head><body><h1>User lookup</h1>{body}</body></html>", status)


def _form(user: str, ds: str) -> str:
    return (f"<form method='get'><label>user id <input name='user' value='{html.escape(user)}' autofocus></label> "
            f"<label>ds <input name='ds' type='date' value='{html.escape(ds)}'></label> "
            "<button>Look up</button> <span class='muted'>(ds empty: the latest published)</span></form>")


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4f}", na_rep="")


def make_app(config: Config) -> FastAPI:
    app = FastAPI(title="recsys user lookup", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def lookup(user: str = Query(""), ds: str = Query("")) -> HTMLResponse:
        form = _form(user, ds)
        if not user:
            return _page(form)
        try:
            day = date.fromisoformat(ds) if ds else None
        except ValueError:
            return _page(form + f"<p>ds {html.escape(ds)!r} is not a date (YYYY-MM-DD).</p>", 400)
        try:
            found = user_lookup(config, user, day)
        except FileNotFoundError as error:  # no warehouse yet
            return _page(form + f"<p>{html.escape(str(error))}</p>", 404)
        if found is None:
            where = f"on {day}" if day else "in the latest published night"
            return _page(form + f"<p>No recommendations for user {html.escape(user)!r} {where}.</p>", 404)
        return _page(form + f"<h2>{html.escape(found.user_id)}, ds {found.ds}</h2>"
                     f"<p>List by <b>{html.escape(found.model_name)}</b> version <b>{html.escape(found.model_version)}"
                     f"</b>, {len(found.recommendations)} items. <a href='/reports/{found.ds}'>That night's report</a>.</p>"
                     f"<h3>Recommended</h3>{_table(found.recommendations)}"
                     f"<h3>Recent history (newest first)</h3>"
                     + (_table(found.history) if len(found.history) else "<p class='muted'>none: a cold user, "
                        "served the popularity list</p>"))

    @app.get("/reports/{ds}", response_model=None)
    def nightly_report(ds: str, run: str | None = Query(None)) -> FileResponse | HTMLResponse:
        """The nightly report of a ds: the given pipeline run's, else the newest (the Airflow run links here)."""
        try:
            day = date.fromisoformat(ds)
        except ValueError:
            return _page(f"<p>ds {html.escape(ds)!r} is not a date (YYYY-MM-DD).</p>", 400)
        path = find_report(AddressBook.from_config(config), day, run)
        if path is None:
            which = f"of run {html.escape(run)!r} " if run else ""
            return _page(f"<p>No nightly report {which}for ds {day} yet: the run's report step writes it.</p>", 404)
        return FileResponse(path, media_type="text/html")

    return app
