"""The regression report: one self-contained HTML file (images inline as data: URIs, no scripts, no
external files) that a person opens to see what changed.

Top to bottom: the verdict and how the run went, a summary per bag, then the frames that changed most,
each with both engines' boxes drawn on the frame and both texts side by side.
"""

from __future__ import annotations

import base64
import html
import io
from types import SimpleNamespace
from typing import Dict, List, Optional

from .compare import SIDES

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
.verdict { padding: 8px 12px; border-radius: 4px; font-weight: 600; display: inline-block; margin: 8px 0; }
.ok { background: #e3f5e1; color: #185c12; } .bad { background: #fde4e1; color: #8a1c10; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.changed td.text { background: #fff3cd; } tr.missing td.text { background: #fde4e1; }
.run { color: #555; } .frame { border-top: 2px solid #ddd; padding-top: 10px; margin-top: 18px; }
.pics { display: flex; gap: 16px; } .pics figure { margin: 0; }
.pics img { width: 480px; image-rendering: auto; border: 1px solid #999; }
figcaption { font-weight: 600; margin-bottom: 4px; }
"""


def write(path: str, run: dict, bags: List[dict], images: Dict[tuple, object], top: int) -> str:
    """`run`: the summary (mobilevlm-regress --json); `bags`: per bag {"key", "status", "error",
    "comparison" (compare.compare_runs) or None, "replay" {side: summary}}; `images`: (bag key, camera,
    stamp_ns) -> RGB array of the frames to show. Writes the page to `path`."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(_title(run))}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{_e(_title(run))}</h1>", _verdict(run), _run_facts(run),
             "<h2>Bags</h2>", _bag_table(bags)]
    changed = changed_frames(bags, top)
    if any(b.get("comparison") for b in bags):
        parts.append(f"<h2>Frames that changed most ({len(changed)} shown)</h2>")
        if not changed:
            parts.append("<p>No frame changed: every caption, answer and box is the same on both sides.</p>")
        for key, frame in changed:
            parts.append(_frame(key, frame, images.get((key, frame["camera"], frame["stamp_ns"]))))
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path


def changed_frames(bags: List[dict], top: int) -> List[tuple]:
    """(bag key, frame) of the `top` frames with the highest change score, over all bags."""
    frames = [(b["key"], f) for b in bags if b.get("comparison") for f in b["comparison"]["frames"]
              if f["score"] > 0]
    frames.sort(key=lambda kf: -kf[1]["score"])
    return frames[:top]


def _title(run: dict) -> str:
    base = run.get("baseline") or {}
    against = base.get("engine") or base.get("against")
    cand = run["candidate"]["engine"]
    return f"mobilevlm-regress: {cand}" + (f" against {against}" if against else "")


def _verdict(run: dict) -> str:
    if run["failed"]:
        return f"<div class='verdict bad'>{len(run['failed'])} bag(s) failed</div>"
    if run["crossed"]:
        items = "".join(f"<li>{_e(c)}</li>" for c in run["crossed"])
        return f"<div class='verdict bad'>Thresholds crossed</div><ul>{items}</ul>"
    return "<div class='verdict ok'>Within thresholds</div>"


def _run_facts(run: dict) -> str:
    t = run.get("totals") or {}
    facts = [f"executor {run['executor']}", f"address {run['address']}", f"workers {run['workers']}",
             f"{run['threads_per_task']} threads per replay", f"wall time {run['wall_s']:.1f} s",
             f"CPU {run['cpu']} ({run['cores']} cores)", f"{run['pairs_run']} replays run, "
             f"{run['pairs_resumed']} resumed"]
    if t:
        facts.append(f"{t['frames']} frames, {t['changed']} of {t['texts']} texts changed, "
                     f"mean similarity {_num(t['mean_similarity'])}")
    return f"<p class='run'>{_e(' · '.join(facts))}</p>"


def _bag_table(bags: List[dict]) -> str:
    head = ("<tr><th>bag</th><th>status</th><th>frames</th><th>texts changed</th><th>mean similarity</th>"
            "<th>count changes</th><th>box changes</th><th>min IoU</th><th>one side only</th>"
            "<th>replay s (candidate / baseline)</th></tr>")
    rows = []
    for b in bags:
        walls = " / ".join(_num(r.get("wall_s"), 1) for r in b["records"].values()) or "-"
        c = (b.get("comparison") or {}).get("totals")
        status = "ok" if b["status"] == "ok" else f"failed: {b.get('error', '')}"
        if c is None:
            cells = ["-"] * 7
            if b["status"] == "ok":
                rec = next(iter(b["records"].values()))
                cells[0] = str(len(rec["frames"]))
        else:
            cells = [str(c["frames"]), f"{c['changed']} / {c['texts']}", _num(c["mean_similarity"]),
                     f"{c['count_changes']} / {c['counts']}", f"{c['box_changes']} / {c['boxes']}",
                     _num(c["min_iou"]), str(c["missing"])]
        rows.append(f"<tr><td>{_e(b['key'])}</td><td>{_e(status)}</td>"
                    + "".join(f"<td class='num'>{_e(x)}</td>" for x in cells)
                    + f"<td class='num'>{_e(walls)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _frame(key: str, frame: dict, rgb) -> str:
    stamp = frame["stamp_ns"]
    title = (f"{key} · {frame['camera'] or '(image)'} · {stamp // 10**9}.{stamp % 10**9:09d} · "
             f"score {frame['score']:.2f}")
    pics = ""
    if rgb is not None:
        figs = []
        for side in SIDES:
            boxes = [b for a in frame["answers"] for b in a[f"{side}_boxes"]]
            figs.append(f"<figure><figcaption>{side}</figcaption>"
                        f"<img alt='{side}' src='{_jpeg_uri(_draw(rgb, boxes))}'></figure>")
        pics = f"<div class='pics'>{''.join(figs)}</div>"
    rows = []
    if frame["caption"] is not None:
        rows.append(_text_row("caption", frame["caption"]))
    for a in frame["answers"]:
        extra = ""
        if a.get("count") is not None:
            extra += f" · count {a['count'][0]} vs {a['count'][1]}"
        if a.get("boxes"):
            extra += " · boxes " + ", ".join(
                f"{p['phrase'] or '-'} IoU {p['iou']:.2f}" if p["iou"] is not None
                else f"{p['phrase'] or '-'} on {p['side']} only" for p in a["boxes"])
        rows.append(_text_row(f"Q: {a['question']}{extra}", a))
    table = ("<table><tr><th>what</th><th>candidate</th><th>baseline</th><th>similarity / IoU</th></tr>"
             + "".join(rows) + "</table>")
    return f"<div class='frame'><h3>{_e(title)}</h3>{pics}{table}</div>"


def _text_row(what: str, item: dict) -> str:
    cls = "missing" if item.get("missing") else ("changed" if item["changed"] else "")
    cand, base = item["candidate_text"], item["baseline_text"]
    ious = [p["iou"] or 0.0 for p in item.get("boxes", [])]
    # a grounded answer's text is its boxes' coordinates: its likeness is theirs
    likeness = f"IoU {min(ious):.2f}" if item.get("grounded") and ious else f"{item['similarity']:.2f}"
    return (f"<tr class='{cls}'><td>{_e(what)}</td><td class='text'>{_e(_or_missing(cand))}</td>"
            f"<td class='text'>{_e(_or_missing(base))}</td><td class='num'>{likeness}</td></tr>")


def _draw(rgb, boxes: List[dict]):
    """The frame with `boxes` ([{"phrase", "box"}]) drawn, phrases in a fixed order so that a phrase
    gets the same colour on both sides when both have the same phrases."""
    from ..ros.annotate import draw_answer

    ordered = sorted(boxes, key=lambda b: b["phrase"])
    return draw_answer(rgb, "", [SimpleNamespace(x1=b["box"][0], y1=b["box"][1], x2=b["box"][2],
                                                 y2=b["box"][3], phrase=b["phrase"]) for b in ordered])


def _jpeg_uri(rgb) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _or_missing(text: Optional[str]) -> str:
    return "(none)" if text is None else text


def _num(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _e(text) -> str:
    return html.escape(str(text))
