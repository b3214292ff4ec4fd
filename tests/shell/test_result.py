"""The result type's pieces that need no engine run."""

from numpyro_gflow.result import LazyStats, with_stats


def test_lazy_stats_compute_each_group_once_when_first_read():
    calls = []

    def elbo():
        calls.append("elbo")
        return {"elbo": -1.5, "elbo_se": 0.1}

    s = LazyStats({"step_size": 0.1}, [(("elbo", "elbo_se"), elbo)])
    assert list(s) == ["step_size", "elbo", "elbo_se"] and len(s) == 3 and "elbo" in s
    assert calls == []                       # nothing computed by building or listing keys
    t = with_stats(s, backtracks=2)          # adding numbers keeps the rest lazy
    assert calls == [] and t["backtracks"] == 2 and "backtracks" not in s
    assert s["elbo_se"] == 0.1 and s["elbo"] == -1.5 and calls == ["elbo"]   # once for both
    assert dict(s) == {"step_size": 0.1, "elbo": -1.5, "elbo_se": 0.1} and calls == ["elbo"]
    assert t["elbo"] == -1.5 and calls == ["elbo", "elbo"]   # the copy computes on its own
    assert with_stats(None, a=1) == {"a": 1} and with_stats({"b": 2}, a=1) == {"b": 2, "a": 1}
