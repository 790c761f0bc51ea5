"""The report's part of each benchmark: bench.sections.<module> renders the results of
bench.<module> (bench.registry pairs them), so the report needs no bcc, scapy or root.

A section module defines
  section(result, bench, rel) -> list[str]   its part of REPORT.md (rel: the results
                                              directory as the report links it)
and where it has them
  summary_rows(result, bench) -> rows         [benchmark, arm / goal, value, goal, result]
  misses(result, bench, said) -> lines        every missed goal, by how much and why; `said`
                                              names the explanations already given
  plot(result, bench, results, plt) -> (title, file name) of a PNG written in results.
Why a figure is what it is, is prose in bench/notes/<module>.md (bench.sections.notes).
"""
