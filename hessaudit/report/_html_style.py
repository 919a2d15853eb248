"""The inline stylesheet of ``hessaudit report``'s page.

Responsive by construction, so that the page never scrolls sideways, from a phone's 400 pixels
to a desktop's 1280 (checked in a real headless Chromium by tests/report/test_report_html.py):

* the Bound and Inputs panels sit side by side only above 860 px, and their grid columns are
  ``minmax(0, 1fr)``, so that a long value cannot widen its column past half the page;
* paths and other long strings wrap (``overflow-wrap: anywhere``), layer names only on a
  phone's stacked rows; SHA-256 digests are shortened, whole on hover; numbers never wrap;
* every table sits in a ``.scroll`` box: a table that is still too wide scrolls inside the
  page, never the page itself; below 960 px cells get narrower padding and the share bars
  shrink; below 720 px the per-layer and gate tables stack (one block per row, each cell
  labelled by its column from ``data-label``) and so do the key / value tables of
  "Every field of the audit file";
* the plot shrinks to the page's width, and below 640 px keeps a readable width (720 px) and
  scrolls inside its own box.
"""

from __future__ import annotations

CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0;
        --bar: #4c72b0; --head: #8172b2; --fail: #c44e52; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1100px; padding: 24px; line-height: 1.45;
       overflow-wrap: break-word; }
h1 { font-size: 1.6em; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.2em; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; }
h3 { font-size: 1em; margin: 16px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; overflow-wrap: anywhere; }
.verdict { border-radius: 8px; padding: 14px 18px; font-size: 1.15em; margin: 16px 0; }
.verdict.pass { background: #dafbe1; border: 1px solid var(--ok); }
.verdict.fail { background: #ffebe9; border: 1px solid var(--bad); }
.verdict b { font-size: 1.2em; }
.verdict ul { margin: 6px 0 0; font-size: 0.9em; overflow-wrap: anywhere; }
.grid { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 24px; }
.grid > div { min-width: 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
         vertical-align: middle; }
th { background: var(--bg2); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.key, th.key { color: var(--muted); white-space: nowrap; font-weight: normal;
                 background: none; vertical-align: top; }
td.val { overflow-wrap: anywhere; min-width: 8em; }
td.val.right { text-align: right; }
td.share { white-space: nowrap; font-variant-numeric: tabular-nums; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em;
       overflow-wrap: anywhere; }
code.name { overflow-wrap: normal; }
.digest { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.85em;
          color: var(--muted); cursor: help; white-space: nowrap; }
.pass-cell { color: var(--ok); font-weight: 600; }
.fail-cell { color: var(--bad); font-weight: 700; }
.tag { font-size: 0.75em; border-radius: 4px; padding: 0 4px; margin-left: 4px; color: #fff;
       white-space: nowrap; }
.tag.head { background: var(--head); }
.tag.fail { background: var(--fail); }
.tag.est { background: #9a6700; white-space: normal; }
.tag.ok { background: var(--ok); }
.estimate { background: #fff8c5; border: 1px solid #9a6700; border-radius: 8px;
            padding: 8px 14px; overflow-wrap: anywhere; }
.bar { display: inline-block; width: 140px; height: 10px; background: var(--bg2);
       border: 1px solid var(--line); vertical-align: middle; margin-right: 6px; }
.bar > span { display: block; height: 100%; background: var(--bar); }
.bar.failing > span { background: var(--fail); }
.note { color: var(--muted); font-size: 0.85em; overflow-wrap: anywhere; }
.plot img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.bound { font-size: 1.25em; font-weight: 700; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 1 1 140px; min-width: 0; border: 1px solid var(--line); border-radius: 8px;
        padding: 8px 12px; background: var(--bg2); }
.card .k { color: var(--muted); font-size: 0.85em; overflow-wrap: anywhere; }
.card .v small { white-space: nowrap; }
.card .v { font-size: 1.2em; font-weight: 600; font-variant-numeric: tabular-nums;
           overflow-wrap: anywhere; }
.card table { font-size: 0.85em; }
details { margin: 12px 0; }
summary { cursor: pointer; font-weight: 600; }
table.fields td, table.kv td { vertical-align: top; }
@media (max-width: 960px) {
  th, td { padding: 4px 5px; }
  td.share .bar { width: 48px; }
}
@media (max-width: 860px) {
  .grid { grid-template-columns: minmax(0, 1fr); gap: 0; }
}
@media (max-width: 640px) {
  body { padding: 12px; }
  h1 { font-size: 1.3em; }
  .plot { overflow-x: auto; }
  .plot img { max-width: none; width: 720px; }
}
@media (max-width: 720px) {
  table.stack thead { display: none; }
  table.stack, table.stack tbody, table.stack tr { display: block; width: 100%; }
  table.stack tr { border-bottom: 2px solid var(--line); padding: 4px 0; }
  table.stack td { display: flex; justify-content: space-between; align-items: baseline;
                   gap: 12px; border: none; padding: 2px 4px; text-align: right;
                   white-space: normal; }
  table.stack td::before { content: attr(data-label); color: var(--muted); text-align: left;
                           white-space: nowrap; }
  table.stack td.first { display: block; text-align: left; font-weight: 600; }
  table.stack td.first::before { content: none; }
  table.stack td.first code { overflow-wrap: anywhere; }
  table.kv, table.kv tbody, table.kv tr, table.kv th.key, table.kv td.val { display: block; }
  table.kv th.key { border: none; padding-bottom: 0; white-space: normal;
                    overflow-wrap: anywhere; }
  table.kv td.val { padding-left: 16px; min-width: 0; }
}
"""
