"""Issue 25, finding 2: a tenant's PromQL is confined to its namespace before it reaches the shared Prometheus.

`confine` injects `namespace="<ns>"` into every vector selector and refuses any other namespace matcher. Checked on
hand-written adversarial queries and on generated ones, where the generator knows every selector it wrote and so
what the confined query must be (an oracle independent of the rewriter)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuneloop.api.rollout import BuiltinMetric
from tuneloop.operator.analysis.prometheus import queries
from tuneloop.operator.analysis.prometheus.promql import QueryRefused, confine, tokenize
from tuneloop.operator.analysis.provider import WindowSignal

pytestmark = pytest.mark.unit
NS = "team-a"
INJ = f'namespace="{NS}"'


@pytest.mark.parametrize("query,expected", [
    ("up", f"up{{{INJ}}}"),
    ('{__name__=~".+"}', f'{{__name__=~".+", {INJ}}}'),
    ('sum(rate(x{a="b"}[5m])) or sum(y)', f'sum(rate(x{{a="b", {INJ}}}[5m])) or sum(y{{{INJ}}})'),
    ("a unless b", f"a{{{INJ}}} unless b{{{INJ}}}"),
    ("max_over_time(x[5m:1m])", f"max_over_time(x{{{INJ}}}[5m:1m])"),
    ("max_over_time(rate(x[1m])[5m:])", f"max_over_time(rate(x{{{INJ}}}[1m])[5m:])"),
    ('label_replace(up, "dst", "}{namespace=\\"b\\"}", "src", "(.*)")',
     f'label_replace(up{{{INJ}}}, "dst", "}}{{namespace=\\"b\\"}}", "src", "(.*)")'),
    ('x{a="}{"}', f'x{{a="}}{{", {INJ}}}'),
    ("x offset 5m", f"x{{{INJ}}} offset 5m"),
    ("x[5m] offset -1m @ 100", f"x{{{INJ}}}[5m] offset -1m @ 100"),
    ("x @ start()", f"x{{{INJ}}} @ start()"),
    (f"sum by (le) (rate(h{{{INJ}}}[1m]))", f"sum by (le) (rate(h{{{INJ}}}[1m]))"),
    ("x * on(le) group_left(job) y", f"x{{{INJ}}} * on(le) group_left(job) y{{{INJ}}}"),
    ("x > bool 1", f"x{{{INJ}}} > bool 1"),
    ("offset", f"offset{{{INJ}}}"),  # keywords are metric names in operand position, as in Prometheus' grammar
    ("sum + or", f"sum{{{INJ}}} + or{{{INJ}}}"),
    ('{"my.metric", a="1"}', f'{{"my.metric", a="1", {INJ}}}'),
    ("x # {namespace=~\".*\"}\n + y", f"x{{{INJ}}} # {{namespace=~\".*\"}}\n + y{{{INJ}}}"),
    ("vector(1)", "vector(1)"),
])
def test_every_selector_gets_the_namespace(query, expected):
    assert confine(query, NS) == expected


@pytest.mark.parametrize("query", [
    'x{namespace!="x"}', 'x{namespace=~".*"}', 'x{namespace="team-b"}', 'x{"namespace"="team-b"}',
    'x{namespace="te\\x61m-a"}', 'x{"name\\x73pace"="team-a"}', 'x{namespace=~"team-a|team-b"}',
    'sum(a) or b{namespace=~".+"}', 'x{a="1" or b="2"}', "x{", "x}", "sum(x", "rate(x[5m{a=\"b\"}])", "x y",
    "x[5m:step()]", "$x", 'x{a=~"1"', 'x{a}',
])
def test_foreign_or_unreadable_queries_are_refused(query):
    with pytest.raises(QueryRefused):
        confine(query, NS)


def test_refusal_names_the_selector_and_the_namespace():
    with pytest.raises(QueryRefused, match='namespace=~".\\*".*confined to namespace \'team-a\''):
        confine('x{namespace=~".*"}', NS)


def test_only_a_namespace_name_is_injected():
    with pytest.raises(QueryRefused):
        confine("up", 'a"} or up{b="')


# --- generated queries: the generator knows every selector, so it knows the confined text -------------------------
_names = st.sampled_from(["up", "http_requests_total", "vllm:e2e_request_latency_seconds_bucket", "sum", "offset", "by"])
_labels = st.sampled_from(["job", "handler", "le", "__name__", "status"])
_values = st.sampled_from(['"a"', '"}{"', '"a,b"', "'x'", '"namespace=\\"b\\""', '".+"', "`raw`"])
_ops = st.sampled_from(["=", "!=", "=~", "!~"])
_ws = st.sampled_from(["", " ", "\n", " # {namespace=~\".*\"} or x\n"])


@st.composite
def _selector(draw):
    name = draw(st.one_of(st.none(), _names))
    matchers = draw(st.lists(st.tuples(_labels, _ops, _values), max_size=3, min_size=0 if name else 1))
    if draw(st.booleans()):
        matchers.append(("namespace", "=", f'"{NS}"'))  # the tenant's own namespace: kept once
    texts = [f"{lbl}{op}{val}" for lbl, op, val in matchers]
    kept = [f"{lbl}{op}{val}" for lbl, op, val in matchers if lbl != "namespace"]
    braces = bool(texts) or not name or draw(st.booleans())
    src = (name or "") + ("{" + ", ".join(texts) + "}" if braces else "")
    out = (name or "") + "{" + "".join(m + ", " for m in kept) + INJ + "}"
    return src, out


def _wrap(draw, inner, kind):
    s, o = inner
    w = draw(_ws)
    if kind == "rate":
        rng = draw(st.sampled_from(["[5m]", "[1m:10s]", "[5m] offset 1m", "[5m] @ end()"]))
        return f"rate({w}{s}{rng})", f"rate({w}{o}{rng})"
    if kind == "agg":
        grp = draw(st.sampled_from(["sum by (le) ", "max without (job, status)", "count ", "topk(2, "]))
        if grp.startswith("topk"):
            return f"{grp}{s})", f"{grp}{o})"
        return f"{grp}({s})", f"{grp}({o})"
    if kind == "label_replace":
        return f'label_replace({s}, "dst", "{{}}", "src", "(.*)")', f'label_replace({o}, "dst", "{{}}", "src", "(.*)")'
    return f"histogram_quantile(0.9,{w}{s})", f"histogram_quantile(0.9,{w}{o})"


@st.composite
def _expr(draw, depth=2):
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(_selector())
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["rate", "agg", "label_replace", "hq"]))
        if kind == "rate":
            return _wrap(draw, draw(_selector()), kind)
        return _wrap(draw, draw(_expr(depth - 1)), kind)
    a, b = draw(_expr(depth - 1)), draw(_expr(depth - 1))
    op = draw(st.sampled_from([" or ", " unless ", " and on(le) ", " / ", " > bool ", " * ignoring(job) group_left() ", "+"]))
    w = draw(_ws)
    return f"({a[0]}){w}{op}{w}{b[0]}", f"({a[1]}){w}{op}{w}{b[1]}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expr())
def test_generated_queries_are_confined_exactly(pair):
    src, expected = pair
    assert confine(src, NS) == expected


@settings(max_examples=50, deadline=None)
@given(_expr(), st.sampled_from(['namespace!="x"', 'namespace=~".*"', 'namespace="team-b"', '"namespace"=~"team-.*"']))
def test_a_foreign_namespace_matcher_anywhere_is_refused(pair, foreign):
    src, _ = pair
    bad = f"{src} or up{{{foreign}}}"
    with pytest.raises(QueryRefused):
        confine(bad, NS)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='ab{}[]()"=~!,:# \n.5mx', max_size=30))
def test_arbitrary_text_is_confined_or_refused_never_passed_through(text):
    """Whatever the input, either it is refused or every selector in the output names the namespace."""
    try:
        out = confine(text, NS)
    except QueryRefused:
        return
    toks = tokenize(out)
    opens = [i for i, t in enumerate(toks) if t.text == "{"]
    for i in opens:
        close = next(j for j in range(i, len(toks)) if toks[j].text == "}")
        assert INJ in "".join(t.text for t in toks[i:close + 1]), out


def _selectors(query: str) -> list[str]:
    toks = tokenize(query)
    out = []
    for i, t in enumerate(toks):
        if t.text == "{":
            close = next(j for j in range(i, len(toks)) if toks[j].text == "}")
            out.append("".join(x.text for x in toks[i:close + 1]))
    return out


@pytest.mark.parametrize("builtin", list(BuiltinMetric))
def test_builtin_queries_carry_the_namespace_in_every_selector(builtin):
    from tuneloop.api.rollout import AnalysisMetric

    q = queries.render_metric(AnalysisMetric(name="m", builtin=builtin, max=1), namespace=NS, rollout="bot", role="canary", window="1m")
    sels = _selectors(q)
    assert sels and all(INJ.replace(" ", "") in s for s in sels), q
    assert confine(q, NS)  # and nothing in them names another namespace


@pytest.mark.parametrize("signal", list(WindowSignal))
def test_drift_queries_carry_the_namespace_in_every_selector(signal):
    q = queries.render_drift(signal, namespace=NS, rollout="bot", model_version="v1", window="1h")
    sels = _selectors(q)
    assert sels and all(INJ in s for s in sels), q
    assert confine(q, NS)
