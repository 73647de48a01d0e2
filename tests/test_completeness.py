"""The provenance is complete, by construction of a test generated from discovery: for every registered editor,
benchmark, metric and attack, each constructor argument is changed in turn (and each declared input file is edited) and
the run fingerprint (or, for editors, the fit fingerprint too) must change, unless the component declares the argument
as one that decides no image or score (a cache or output folder, ``RESUMABLE``)."""

import inspect
import typing

import pytest

from edit_bench.errors import UsageError
from edit_bench.provenance import RESUMABLE, Provenance, not_inputs

# Values to try for string arguments whose choices a constructor validates itself (not a Literal annotation).
ALTERNATIVES = {"recipe": ["current"], "safety_concept": ["sld", "a banana"], "concept_space": ["nudity", ["a banana"]], "params": ["noxattn", "esd-u", "full-weight"], "anchor": ["A dog"], "sites": ["all", ["up_blocks.1.attentions.1"]]}


def _alternatives(name, param, default):
    """Candidate values other than ``default`` for one constructor argument, from its default and annotation."""
    ann = param.annotation if param.annotation is not inspect.Parameter.empty else None
    if isinstance(ann, str):
        ann_text = ann
    else:
        ann_text = str(ann)
    out = list(ALTERNATIVES.get(name, []))
    if "Debias" in ann_text:
        out.append({"rounds": 2})
    if "SamplerConfig" in ann_text:
        out.append({"scheduler": "ddim", "steps": 3, "guidance": 5.0, "size": None, "seeds": [0], "eta": 0.0})
    if "Literal" in ann_text:
        out += [c for c in _literal_choices(ann_text) if c != default]
    if isinstance(default, bool):
        out.append(not default)
    elif isinstance(default, int):
        out += [default + 1, default * 2 + 2, max(1, default // 2)]
    elif isinstance(default, float):
        out += [default * 2 if default else 0.5, default / 2 if default else 1.0, default + 1.0]
    elif isinstance(default, (tuple, list)):
        if default and all(isinstance(x, str) for x in default):
            out += [list(default)[:1] if len(default) > 1 else list(default) + [str(default[0]) + " {}"]]
        elif not default:
            out += [["a dog"]]
    elif default is None:
        if "bool" in ann_text:
            out += [True, False]
        if "float" in ann_text:
            out += [0.5, 2.0]
        if "int" in ann_text:
            out += [2, 3]
    return [v for v in out if v != default]


def _literal_choices(text: str) -> list:
    import re

    m = re.search(r"Literal\[([^\]]*)\]", text)
    if not m:
        return []
    return [eval(x.strip()) for x in m.group(1).split(",") if x.strip()]  # noqa: S307 - literals of our own signatures


def _perturbations(cls, make, declared_skip=(), resolved=None):
    """``(argument, value, component)`` for every argument that can be changed to a value the constructor accepts."""
    sig = inspect.signature(cls.__init__)
    resolved = resolved or {}  # the reference's values as used (a None default resolved by the constructor)
    out, unchangeable = [], []
    for name, param in sig.parameters.items():
        if name in ("self", "base", "name", "args", "kwargs") or name in declared_skip:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default if param.default is not inspect.Parameter.empty else None
        built = None
        for value in _alternatives(name, param, default):
            if value == resolved.get(name, default):
                continue
            try:
                built = make(**{name: value})
            except (UsageError, ValueError, TypeError):
                continue
            out.append((name, value, built))
            break
        if built is None:
            unchangeable.append(name)
    return out, unchangeable


def _data():
    from edit_bench.benchmarks.timed import TIMED
    from edit_bench.metrics import EditScores, JudgeConfig
    from edit_bench.types import SamplerConfig

    return TIMED(rows="0:1", sampler=SamplerConfig(steps=2, size=32, seeds=[0]), judge=JudgeConfig(model="tiny:random"),
                 metrics=[EditScores()])


# ---------------------------------------------------------------------------------------------- editors
def _editors():
    from edit_bench.editors import discover

    return discover()


# arguments whose every other value this generic search tries is refused by the constructor on tiny:sd1, listed so a
# new one is noticed (each is covered by the editor's own tests)
EDITOR_UNCHANGEABLE = {}


@pytest.mark.parametrize("name", sorted(_editors()))
def test_every_editor_argument_changes_the_fingerprints(name):
    cls = _editors()[name]
    data = _data()
    base = cls(base="tiny:sd1", **cls.contract_args)
    try:
        base.t2i
    except UsageError:
        pytest.skip(f"{name} has no tiny:sd1 form")
    ref_run, ref_fit = Provenance.build(base, data).run(), Provenance.build(base, data).fit()
    args = dict(cls.contract_args)

    def make(**kw):
        ed = cls(base="tiny:sd1", **{**args, **kw})
        ed.t2i
        return ed

    files = tuple(cls.files)  # caches and outputs never count; inputs by content (the next test)
    found, unchangeable = _perturbations(cls, make, declared_skip=files, resolved=dict(base.hparams))
    missed = []
    for arg, value, ed in found:
        run, fit = Provenance.build(ed, data).run(), Provenance.build(ed, data).fit()
        if run == ref_run or fit == ref_fit:
            missed.append(f"{arg}={value!r}")
    assert not missed, f"{name}: changing {missed} leaves a fingerprint unchanged"
    assert set(unchangeable) <= EDITOR_UNCHANGEABLE.get(name, set()), f"{name}: no accepted value found for {unchangeable}"


def test_declared_cache_arguments_do_not_change_the_fingerprint_and_declared_inputs_do(tmp_path):
    """A cache or output is written by the run: neither its path nor its content changes the provenance. An input's
    content does, whatever its path."""
    import shutil

    from edit_bench.benchmarks.base import resolve_path

    data = _data()
    for name, cls in sorted(_editors().items()):
        roles = cls.files
        if not roles:
            continue
        for arg, role in roles.items():
            if role == "input" and arg == "corpus":
                src = resolve_path(cls(base="tiny:sd1", **cls.contract_args).hparams[arg])
                copy = tmp_path / f"{name}-{src.name}"
                shutil.copy(src, copy)
                a = Provenance.build(cls(base="tiny:sd1", **{**cls.contract_args, arg: str(copy)}), data).run()
                with open(copy, "a") as f:
                    f.write("\na changed caption\n" if copy.suffix != ".csv" else "\n")
                    f.write("a changed caption\n")
                b = Provenance.build(cls(base="tiny:sd1", **{**cls.contract_args, arg: str(copy)}), data).run()
                assert a != b, f"{name}: editing the {arg} file leaves the fingerprint unchanged"
            elif role != "input":
                d1, d2 = tmp_path / f"{name}-{arg}-1", tmp_path / f"{name}-{arg}-2"
                d1.mkdir()
                a = Provenance.build(cls(base="tiny:sd1", **{**cls.contract_args, arg: str(d1)}), data).run()
                (d1 / "written.bin").write_bytes(b"x")
                assert Provenance.build(cls(base="tiny:sd1", **{**cls.contract_args, arg: str(d1)}), data).run() == a, (name, arg)
                assert Provenance.build(cls(base="tiny:sd1", **{**cls.contract_args, arg: str(d2)}), data).run() == a, (name, arg)


# ---------------------------------------------------------------------------------------------- metrics and attacks
def _metrics():
    import edit_bench.metrics as M
    from edit_bench.metrics.base import SampleMetric

    def subs(c):
        for s in c.__subclasses__():
            yield s
            yield from subs(s)

    return {c.__name__: c for c in subs(SampleMetric) if c.__module__.startswith("edit_bench.metrics")
            and not c.__name__.startswith("_") and not inspect.isabstract(c) and hasattr(M, c.__name__)}


# Constructor arguments a metric or benchmark cannot be built without (the rest are changed in turn).
REQUIRED = {"AttributeShare": {"attributes": ["red", "blue"]}, "ClipAccuracy": {"candidates": ["circle", "square"]},
            "ConceptPrompts": {"concepts": ["circle", "square"], "templates": ["a {}"], "erase": ["circle"]},
            "EditRequests": {"requests": [{"source": "A banana", "target": "A blue banana"}]}}
# Metrics whose scorer's weights cannot exist on a test machine (nothing is downloaded): built, they name the file.
NEEDS_WEIGHTS = {"FID": "inception-2015-12-05.pt", "LPIPS": "alexnet-owt-7be5be79.pth", "ImageClassifier": "resnet50-11ad3fa6.pth"}


@pytest.mark.parametrize("name", sorted(_metrics()))
def test_every_metric_argument_changes_the_run_fingerprint(name):
    from edit_bench.editors.time import TIME

    cls = _metrics()[name]
    ed, data = TIME(base="tiny:sd1"), _data()
    data.absent = {"rule": "new"}  # for the paired metrics against the concept-absent images
    need = REQUIRED.get(name, {})

    def make(**kw):
        m = cls(**{**need, **kw})
        m.prepare(data)  # a judge metric takes the benchmark's judge
        return m

    if name in NEEDS_WEIGHTS:  # what can be checked here: the missing weights are named, in one line
        with pytest.raises(UsageError, match=NEEDS_WEIGHTS[name].replace(".", r"\.")):
            Provenance.build(ed, data, metrics=[make()])
        return
    first = make()
    ref = Provenance.build(ed, data, metrics=[first]).run()
    resolved = {k: getattr(first, k) for k in inspect.signature(cls.__init__).parameters if hasattr(first, k)}
    found, _ = _perturbations(cls, make, declared_skip=("device", "batch_size", *need), resolved=resolved)
    missed = [f"{arg}={value!r}" for arg, value, m in found
              if Provenance.build(ed, data, metrics=[m]).run() == ref]
    assert not missed, f"{name}: changing {missed} leaves the run fingerprint unchanged"


def _attacks():
    from edit_bench.attacks import base  # noqa: F401
    import edit_bench.attacks as A

    def subs(c):
        for s in c.__subclasses__():
            yield s
            yield from subs(s)

    return {c.__name__: c for c in subs(A.Attack) if not inspect.isabstract(c)}


@pytest.mark.parametrize("name", sorted(_attacks()))
def test_every_attack_argument_changes_the_run_fingerprint(name):
    from edit_bench.editors.time import TIME

    cls = _attacks()[name]
    ed = TIME(base="tiny:sd1")

    def prov(attack):
        data = _data()
        data.attacks = [attack]
        return Provenance.build(ed, data).run()

    ref = prov(cls())
    found, unchangeable = _perturbations(cls, lambda **kw: cls(**kw), declared_skip=("batch_size",))
    missed = [f"{arg}={value!r}" for arg, value, a in found if prov(a) == ref]
    assert not missed, f"{name}: changing {missed} leaves the run fingerprint unchanged"


# ---------------------------------------------------------------------------------------------- benchmarks
def _benchmarks():
    from edit_bench.benchmarks import discover

    return {n: c for n, c in discover().items() if n != "Benchmark"}  # the base of the TIMED-format benchmarks


@pytest.mark.parametrize("name", sorted(_benchmarks()))
def test_every_benchmark_argument_changes_the_run_fingerprint(name):
    from edit_bench.editors.time import TIME

    cls = _benchmarks()[name]
    ed = TIME(base="tiny:sd1")
    need = REQUIRED.get(name, {})
    ref = Provenance.build(ed, cls(**need)).run()
    found, _ = _perturbations(cls, lambda **kw: cls(**{**need, **kw}), declared_skip=(*RESUMABLE, "metrics", *need))
    missed = [f"{arg}={value!r}" for arg, value, d in found if Provenance.build(ed, d).run() == ref]
    assert not missed, f"{name}: changing {missed} leaves the run fingerprint unchanged"
