"""The report's control-plane section (bench.control: control.json)."""
from __future__ import annotations

from pathlib import Path

from bench.sections import notes
from bench.sections.text import fmt, save_figure, spread, table, verdict

COLD_APPLY_GOAL_S, COLD_APPLY_GOAL_AT = 5.0, "1000x100"
HEALTH_GOAL_MS = 50


# issue 23 at 1,000 ipip VIPs with second chance x 100 backends: figure -> (what, unit)
SCALE = {"first_tables_s": ("cold apply, first tables", "s"),
         "all_s": ("cold apply until every second table is built", "s"),
         "rss_mb": ("resident memory after it", "MB"),
         "health_ms": ("health change → maps", "ms"),
         "reload_one_ms": ("reload changing one VIP", "ms")}


def _scale_rows(sc: dict, bench) -> list[list[str]]:
    rows = []
    for key, (what, unit) in SCALE.items():
        goal = sc["goals"][key]
        before = sc.get("before", {}).get(key)
        was = f" (before {fmt(before, 2)} {unit})" if before is not None else ""
        rows.append([bench.name, f"second chance {sc['config'].split()[0]}: {what}",
                     f"{fmt(sc['now'][key], 2)} {unit}{was}", f"<= {goal['goal']:g} {unit}",
                     verdict(goal["met"])])
    return rows


def summary_rows(ctl: dict, bench) -> list[list[str]]:
    rows = _scale_rows(ctl["second_chance_scale"], bench) if "second_chance_scale" in ctl else []
    for size, s in ctl["cold_apply_s"].items():
        goal, met = ((f"<= {COLD_APPLY_GOAL_S:g} s", s <= COLD_APPLY_GOAL_S)
                     if size == COLD_APPLY_GOAL_AT else ("–", None))
        rows.append([bench.name, f"cold apply {size}", f"{fmt(s, 3)} s", goal,
                     verdict(met) if met is not None else "measured"])
    rows.append([bench.name, "health change → maps", f"{fmt(ctl['health_to_map_ms'], 1)} ms "
                 f"(at {ctl.get('health_config')})", f"<= {HEALTH_GOAL_MS} ms",
                 verdict(ctl["health_to_map_ms"] <= HEALTH_GOAL_MS)])
    rows.append([bench.name, "cold start (compile+load+apply+attach)",
                 f"{fmt(ctl['cold_start']['s'], 2)} s", "–", "measured"])
    rows.append([bench.name, "lbd resident memory", f"{fmt(ctl['rss_mb'])} MB "
                 f"(at {ctl.get('rss_config')})", "–", "measured"])
    return rows


def misses(ctl: dict, bench, said: set[str]) -> list[str]:
    out = []
    sc = ctl.get("second_chance_scale")
    for key, goal in (sc or {}).get("goals", {}).items():
        if not goal["met"]:
            what, unit = SCALE[key]
            out.append(f"- control: at {sc['config']}, {what} "
                       f"{fmt(goal['value'], 2)} {unit} against {goal['goal']:g} {unit}. "
                       + notes.say("control", f"why {key}", {**ctl, "sc": sc}))
    s = ctl["cold_apply_s"].get(COLD_APPLY_GOAL_AT)
    bd = ctl.get("breakdown", {})
    steps = ", ".join(f"{k} {fmt(v, 2)} ms" for k, v in
                      sorted(bd.get("per_vip_ms", {}).items(), key=lambda kv: -kv[1]))
    if s is not None and s > COLD_APPLY_GOAL_S:
        out.append(f"- control: cold apply of 1,000 x 100 took {fmt(s, 1)} s, "
                   f"{fmt(s / COLD_APPLY_GOAL_S, 1)}x the 5 s goal. Per VIP ({bd.get('config')} "
                   f"profiled): {steps}. " + notes.say("control", "why cold apply", ctl))
    health = ctl["health_to_map_ms"]
    if health > HEALTH_GOAL_MS:
        unchanged_s = ctl["reload_unchanged_s"].get(ctl.get("health_config"), 0)
        out.append(f"- control: health change to maps {fmt(health)} ms, "
                   f"{fmt(health / HEALTH_GOAL_MS, 2)}x the 50 ms goal at "
                   f"{ctl.get('health_config')}: " + notes.say(
                       "control", "why health",
                       {**ctl, "reload_unchanged_ms": 1000 * unchanged_s, "steps": steps}))
    return out


def plot(ctl: dict, bench, results: Path, plt) -> tuple[str, str] | None:
    if not ctl.get("cold_apply_s"):
        return None
    sizes = list(ctl["cold_apply_s"])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(sizes, [ctl["cold_apply_s"][s] for s in sizes], color="#4c72b0", label="cold apply")
    ax.bar(sizes, [ctl.get("reload_one_vip_changed_s", {}).get(s, 0) for s in sizes],
           color="#dd8452", label="reload, one VIP changed")
    ax.axhline(COLD_APPLY_GOAL_S, color="black", linestyle="--", linewidth=1,
               label="goal for 1000x100: 5 s")
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    ax.set_xlabel("VIPs x backends per VIP")
    ax.set_title("Control plane: apply time")
    ax.legend()
    return save_figure(fig, results / f"{bench.name}.png", "Control-plane apply time")


def section(ctl: dict, bench, rel: str) -> list[str]:
    sizes = list(ctl["cold_apply_s"])
    return ["## Control-plane scale (`control.json`)", "", ctl["method"] + ".", "",
            table(["VIPs x backends", "cold apply s", "spread", "reload unchanged s",
                   "reload one VIP changed s"],
                  [[s, fmt(ctl["cold_apply_s"][s], 3), spread(ctl["cold_apply_spread_s"][s], 3),
                    fmt(ctl["reload_unchanged_s"][s], 4),
                    fmt(ctl["reload_one_vip_changed_s"][s], 4)] for s in sizes]), "",
            f"Health change to maps: {fmt(ctl['health_to_map_ms'], 1)} ms "
            f"(spread {spread(ctl['health_to_map_spread_ms'])}) at {ctl['health_config']}. "
            f"Resident memory: {fmt(ctl['rss_mb'])} MB (peak {fmt(ctl['rss_peak_mb'])} MB) "
            f"with {ctl['rss_config']} applied, bcc/LLVM included. Cold start "
            f"({ctl['cold_start']['what']}): {fmt(ctl['cold_start']['s'], 2)} s; parts: "
            + ", ".join(f"{k} {v} s" for k, v in ctl["cold_start"]["parts_median_s"].items())
            + ". " + notes.say("control", "cold start", ctl), ""] + _scale_section(ctl)


def _scale_section(ctl: dict) -> list[str]:
    sc = ctl.get("second_chance_scale")
    if not sc:
        return []
    names = [n for n in ("before", "now") if n in sc]
    header = ["at " + sc["config"]] + [
        f"before ({sc.get('before_rev', '')})" if n == "before" else "today" for n in names] + ["goal"]
    rows = []
    for key, (what, unit) in SCALE.items():
        rows.append([what] + [f"{fmt(sc[n][key], 2)} {unit} ({spread(sc[n]['spread'][key], 2)})"
                              for n in names] + [f"<= {sc['goals'][key]['goal']:g} {unit}"])
    return ["### Second chance at scale", "", f"{sc['what']}; runs per program: {sc['runs']} "
            "(median, spread). " + notes.say("control", "second chance at scale", {**ctl, "sc": sc}), "",
            table(header, rows), ""]
