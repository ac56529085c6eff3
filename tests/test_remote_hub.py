"""hf:// checkpoints against a real Hub API implementation on 127.0.0.1: olah in offline mode
serving local git repositories (one branch or tag per checkpoint, weights stored as git-lfs
objects), behind a recording proxy that can inject faults.  olah ignores Range (it answers 200
with the whole file), so every ranged read here also exercises the whole-file fallback."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm.cli import app

from conftest import decode, write_run
from servers import Proxy, commit_files, git, new_repo, start_olah, stop

pytest.importorskip("olah")
runner = CliRunner()
NAMES = ["step100", "step200-tokens1B", "step-000300-3BT", "stage1-step400-tokens5B"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """olah serving testorg/tiny (a branch per checkpoint, the last one a tag, and a main
    without weights), testorg/trainer (checkpoint-N/ folders on main) and a private repo."""
    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    run = write_run(root / "local" / "tiny", n=4, d=32, vocab=500, every=100)
    files = sorted(run.glob("*.safetensors"))
    files = files[1:] + files[:1]  # steps 100, 200, 300 and the one written as step 0 ...
    local = root / "expected" / "tiny"  # ... renamed to the steps the revisions carry
    local.mkdir(parents=True)
    repo = new_repo(mirrors, "testorg/tiny")
    commits = {}
    commit_files(repo, {"README.md": b"a training run, one revision per checkpoint\n"})
    for name, step, f in zip(NAMES, (100, 200, 300, 400), files):
        shutil.copy(f, local / f"step_{step:06d}.safetensors")
        branch = name if not name.startswith("stage1") else "tmp"
        commits[name] = commit_files(repo, {"model.safetensors": f, "config.json": b'{"d": 32}'},
                                     branch=branch)
        if branch == "tmp":
            git(repo, "tag", name)
            git(repo, "checkout", "-q", "main")
            git(repo, "branch", "-D", "tmp")
    git(repo, "checkout", "-q", "main")
    trainer = new_repo(mirrors, "testorg/trainer")
    tl = write_run(root / "local" / "run", n=3, name="checkpoint-{step}/model.safetensors", every=100)
    commit_files(trainer, {f"run/{p.relative_to(tl).as_posix()}": p for p in tl.rglob("*.safetensors")})
    private = new_repo(mirrors, "testorg/private-run")
    commit_files(private, {"README.md": b"private\n"})
    commit_files(private, {"model.safetensors": files[0]}, branch="step100")
    proc, url = start_olah(root / "olah", mirrors)
    yield {"url": url, "local": local, "mirrors": mirrors, "trainer": tl, "commits": commits, "repo": repo,
           "files": {n: local / f"step_{s:06d}.safetensors" for n, s in zip(NAMES, (100, 200, 300, 400))}}
    stop(proc)


@pytest.fixture
def proxy(hub, monkeypatch, tmp_path):
    p = Proxy(hub["url"])
    monkeypatch.setenv("HF_ENDPOINT", p.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("layerfilm.checkpoints.transfer.BACKOFF", 0.01)
    yield p
    p.close()


def cli(*args):
    return runner.invoke(app, [*map(str, args)])


def resolves(proxy, match=""):
    return [e for e in proxy.gets("/resolve/") if match in e[1]]


ARGS = ("--fps", "2", "--size", "160x90", "-q", "--max-points", "60")


def test_every_revision_naming_a_step_is_a_checkpoint(tmp_path, hub, proxy):
    local = cli("render", hub["local"], tmp_path / "local.gif", *ARGS, "--no-cache")
    assert local.exit_code == 0, local.output
    remote = cli("render", "hf://testorg/tiny", tmp_path / "hub.gif", *ARGS)
    assert remote.exit_code == 0, remote.output
    assert np.array_equal(decode(tmp_path / "local.gif"), decode(tmp_path / "hub.gif"))
    doc = json.loads((tmp_path / "hub.gif.json").read_text())
    assert doc["checkpoints"]["folder"] == "hf://testorg/tiny"
    assert doc["checkpoints"]["remote"]["revisions"] == hub["commits"]
    files = {f["path"]: f for f in doc["checkpoints"]["files"]}
    assert sorted(files) == sorted(f"{n}/model.safetensors" for n in NAMES)
    for name in NAMES:
        f = files[f"{name}/model.safetensors"]
        assert f["commit"] == hub["commits"][name] and f["revision"] == name
        assert f["lfs_sha256"] == hashlib.sha256(hub["files"][name].read_bytes()).hexdigest()
    assert [f["tokens"] for f in doc["checkpoints"]["files"] if "tokens" in f] == \
        [1_000_000_000, 3_000_000_000, 5_000_000_000]
    # olah ignores Range: per file one read of the header (its first bytes taken from the
    # whole-file answer) and one whole download for the drawn rows, always at the commit.
    for name in NAMES:
        gets = resolves(proxy, f"/resolve/{hub['commits'][name]}/model.safetensors")
        assert [e[3] for e in gets] == [200, 200], gets
        assert gets[0][2] == "bytes=0-16383" and gets[1][2].startswith("bytes=")
    size = sum(f.stat().st_size for f in hub["files"].values())
    assert doc["checkpoints"]["remote"]["bytes_stored"] == size
    # A re-render makes no data requests (layouts, headers, logs cached by commit and sha256).
    proxy.clear()
    again = cli("render", "hf://testorg/tiny", tmp_path / "again.webm", *ARGS)
    assert again.exit_code == 0, again.output
    assert resolves(proxy) == []


def test_info_lists_revisions_tokens_and_what_is_skipped(hub, proxy):
    result = cli("info", "hf://testorg/tiny", "--max-points", "60")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "source      hf://testorg/tiny" in out
    assert "keyframes   4 checkpoints, steps 100 .. 400 (every 100)" in out
    assert "tokens      1B .. 5B tokens seen" in out
    assert "skipped     hf://testorg/tiny@main: no training step in the revision name" in out
    assert "first/last  step100/model.safetensors .. stage1-step400-tokens5B/model.safetensors" in out


def test_revisions_glob_picks_refs(tmp_path, hub, proxy):
    result = cli("info", "hf://testorg/tiny", "--revisions", "step1*,step2*")
    assert result.exit_code == 0, result.output
    assert "keyframes   2 checkpoints, steps 100 .. 200" in result.output
    assert "step-000300" not in result.output and "@main" not in result.output
    none = cli("info", "hf://testorg/tiny", "--revisions", "nothing*")
    assert none.exit_code == 1 and "no revision matches --revisions nothing*" in none.output
    local = cli("info", hub["local"], "--revisions", "step*")
    assert local.exit_code == 1 and "hf://ORG/REPO" in local.output


def test_one_revision_with_checkpoint_folders(tmp_path, hub, proxy):
    local = cli("render", hub["trainer"], tmp_path / "local.gif", *ARGS, "--no-cache")
    remote = cli("render", "hf://testorg/trainer@main/run", tmp_path / "hub.gif", *ARGS)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert np.array_equal(decode(tmp_path / "local.gif"), decode(tmp_path / "hub.gif"))


@pytest.mark.parametrize("url, words", [
    ("hf://testorg/tiny@step999", "no revision 'step999' in hf://testorg/tiny"),
    ("hf://testorg/tiny@step999/run", "no revision 'step999' in hf://testorg/tiny"),
    ("hf://testorg/private-run", "log in with `hf auth login` or set HF_TOKEN"),
    ("hf://testorg/no-such-repo", "hf://testorg/no-such-repo"),
])
def test_missing_revision_or_repository_is_one_line(tmp_path, hub, proxy, url, words):
    out = tmp_path / "f.gif"
    result = cli("render", url, out, *ARGS)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerfilm: error: ") and words in lines[0], lines
    assert not out.exists() and not (tmp_path / "f.gif.json").exists()


def test_503s_are_retried(tmp_path, hub, proxy):
    proxy.fail(503, n=2, match="/resolve/")
    result = cli("render", "hf://testorg/tiny", tmp_path / "f.gif", *ARGS, "--no-cache")
    assert result.exit_code == 0, result.output
    gets = resolves(proxy)
    assert [e[3] for e in gets[:3]] == [503, 503, 200] and gets[0][1:3] == gets[2][1:3]
    doc = json.loads((tmp_path / "f.gif.json").read_text())
    assert doc["checkpoints"]["remote"]["retries"] == 2


def test_a_missing_file_is_named_with_its_revision(tmp_path, hub, proxy):
    commit = hub["commits"]["step200-tokens1B"]
    proxy.fail(404, n=-1, match=f"/resolve/{commit}/")
    bad = cli("render", "hf://testorg/tiny", tmp_path / "g.gif", *ARGS, "--no-cache")
    assert bad.exit_code == 1 and not (tmp_path / "g.gif").exists()
    assert bad.output.strip() == ("layerfilm: error: hf://testorg/tiny@step200-tokens1B/"
                                  "model.safetensors: cannot read: not found (HTTP 404); "
                                  "--skip-bad leaves it out"), bad.output
    skipped = cli("render", "hf://testorg/tiny", tmp_path / "g.gif", *ARGS, "--no-cache",
                  "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert "warning: skipped hf://testorg/tiny@step200-tokens1B/model.safetensors: " in skipped.output


def test_from_manifest_reads_the_recorded_commits(tmp_path, hub, proxy):
    first = cli("render", "hf://testorg/tiny", tmp_path / "f.gif", *ARGS)
    assert first.exit_code == 0, first.output
    repo = hub["repo"]
    git(repo, "checkout", "-q", "step100")  # the branch moves on: other weights
    commit_files(repo, {"model.safetensors": hub["files"]["step-000300-3BT"]})
    git(repo, "checkout", "-q", "main")
    try:
        moved = cli("render", "hf://testorg/tiny", tmp_path / "moved.gif", *ARGS)
        assert moved.exit_code == 0
        assert not np.array_equal(decode(tmp_path / "f.gif"), decode(tmp_path / "moved.gif"))
        again = cli("render", "--from-manifest", tmp_path / "f.gif.json", tmp_path / "g.gif",
                    "--no-cache")
        assert again.exit_code == 0, again.output
        assert "identical to the film recorded" in again.output
        refs = [e for e in proxy.log if e[1].endswith("/refs")]
        trees = [e[1] for e in proxy.log if "/tree/" in e[1]]
        assert hub["commits"]["step100"] in " ".join(trees)
    finally:
        git(repo, "checkout", "-q", "step100")
        git(repo, "reset", "-q", "--hard", hub["commits"]["step100"])
        git(repo, "checkout", "-q", "main")
    assert refs  # the moved render listed the refs; the re-render used the manifest's commits


def test_torch_pickles_are_downloaded_whole_into_the_hub_cache(tmp_path, hub, proxy):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    repo = new_repo(hub["mirrors"], "testorg/pickles")
    commit_files(repo, {"README.md": b"pickles\n"})
    local = tmp_path / "local" / "pickles"
    local.mkdir(parents=True)
    for name in NAMES[:3]:
        sd = {k: torch.from_numpy(v) for k, v in load_file(str(hub["files"][name])).items()}
        torch.save(sd, local / f"{name}.bin")
        commit_files(repo, {"pytorch_model.bin": local / f"{name}.bin"}, branch=name)
    git(repo, "checkout", "-q", "main")
    expected = cli("render", local, tmp_path / "local.gif", *ARGS, "--no-cache")
    assert expected.exit_code == 0, expected.output
    result = runner.invoke(app, ["render", "hf://testorg/pickles", str(tmp_path / "hub.gif"),
                                 *ARGS[:-3], "--max-points", "60"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(decode(tmp_path / "local.gif"), decode(tmp_path / "hub.gif"))
    size = (local / "step100.bin").stat().st_size
    assert (f"note: hf://testorg/pickles@step100/pytorch_model.bin is a torch pickle: downloading "
            f"all {size / 1000:.1f} kB of it") in result.output
    from layerfilm.checkpoints import hub as hub_storage

    kept = list((tmp_path / "hf-cache").rglob("pytorch_model.bin"))
    assert len(kept) == 2  # in huggingface_hub's own cache, the last two only ...
    hub_storage._dispose()  # ... and removed when it ends (atexit)
    assert list((tmp_path / "hf-cache").rglob("pytorch_model.bin")) == []
    assert [p for p in (tmp_path / "hf-cache").rglob("*") if p.is_file() and p.stat().st_size > 10_000] == []
    keep = runner.invoke(app, ["render", "hf://testorg/pickles", str(tmp_path / "kept.gif"),
                               *ARGS[:-3], "--max-points", "60", "--keep-downloads", "--no-cache"])
    assert keep.exit_code == 0, keep.output
    hub_storage._dispose()
    assert len(list((tmp_path / "hf-cache").rglob("pytorch_model.bin"))) == 3


def test_references_travel_to_another_process(tmp_path, hub, proxy):
    """A checkpoint reference (with its storage) pickles small and reads its bytes itself."""
    import pickle

    from conftest import plan_of
    from layerfilm import extract
    from layerfilm.config import Remote, Selection
    from layerfilm.plan import make_plan

    plan = make_plan(Selection(checkpoints=Remote("hf://testorg/tiny"), max_points=60))
    ref = plan.refs[1]
    blob = pickle.dumps(ref)
    assert len(blob) < 20_000
    copy = pickle.loads(blob)
    ckpt, local = copy.open(), plan_of(hub["local"], max_points=60).refs[1].open()
    for layer in plan.layers:
        assert np.array_equal(extract.read_layer(ckpt, layer, ckpt.shapes()),
                              extract.read_layer(local, layer, local.shapes()))


def test_stats_of_a_hub_repository_equal_the_local_ones(tmp_path, hub, proxy):
    local = cli("stats", hub["local"], "--out", tmp_path / "local", "-q", "--max-points", "60")
    remote = cli("stats", "hf://testorg/tiny", "--out", tmp_path / "hub", "-q", "--max-points", "60")
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert (tmp_path / "local" / "layer_stats.csv").read_text() == \
        (tmp_path / "hub" / "layer_stats.csv").read_text()


def test_watch_follows_new_revisions(tmp_path, hub, proxy):
    """``layerfilm watch hf://ORG/REPO``: each look lists the repository's revisions; a
    checkpoint pushed as a new branch between looks joins the film."""
    from layerfilm.config import RenderConfig
    from layerfilm.watch import watch

    run = write_run(tmp_path / "src", n=3, d=16, every=100)
    files = sorted(run.glob("*.safetensors"))
    repo = new_repo(hub["mirrors"], "testorg/growing")
    commit_files(repo, {"README.md": b"a run still training\n"})
    for step, f in zip((0, 100), files):
        commit_files(repo, {"model.safetensors": f}, branch=f"step{step}")
    git(repo, "checkout", "-q", "main")
    out = tmp_path / "live.gif"
    config = RenderConfig(checkpoints="hf://testorg/growing", output=out, size=(160, 90),
                          frames_per_keyframe=2, fps=4).validated()
    said, looks = [], []

    def sleep(seconds):
        looks.append(len(said))
        if len(looks) == 2:
            commit_files(repo, {"model.safetensors": files[2]}, branch="step200")
            git(repo, "checkout", "-q", "main")
        assert len(looks) < 10, said

    updates = watch(config, interval=0, settle=0, idle_exit=3, say=said.append, sleep=sleep,
                    clock=lambda: float(len(looks)))
    assert [u.steps for u in updates] == [(0, 100), (0, 100, 200)], said
    assert all(u.error is None for u in updates), said
    plain = tmp_path / "plain.gif"
    done = cli("render", "hf://testorg/growing", plain, "--size", "160x90", "--frames-per-keyframe",
               "2", "--fps", "4")
    assert done.exit_code == 0, done.output
    assert out.read_bytes() == plain.read_bytes()


def test_prompts_and_activations_of_a_hub_repository_equal_the_local_ones(tmp_path, hub, proxy):
    """hf:// with --prompt and --points activations: whole tensors are fetched (the command
    says how many bytes first), the config and tokenizer are local, and the answers and the
    film are those of the same checkpoints on disk."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    from layerfilm.checkpoints import human_bytes

    words = [f"w{i}" for i in range(20)]
    config = transformers.GPT2Config(vocab_size=21, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=None, eos_token_id=None)
    here, model_dir = tmp_path / "gpt", tmp_path / "model"  # the title is the folder's name
    here.mkdir()
    config.save_pretrained(model_dir)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + ["<unk>"])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(model_dir)
    repo = new_repo(hub["mirrors"], "testorg/gpt")
    commit_files(repo, {"README.md": b"a tiny GPT-2, one revision per checkpoint\n"})
    torch.manual_seed(3)
    model, total = transformers.GPT2LMHeadModel(config), 0
    for step in (100, 200, 300):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        sd = {n: t.contiguous() for n, t in model.state_dict().items() if n != "lm_head.weight"}
        total += sum(t.numel() * t.element_size() for t in sd.values())
        save_file(sd, str(here / f"step_{step:06d}.safetensors"))
        commit_files(repo, {"model.safetensors": here / f"step_{step:06d}.safetensors"}, branch=f"step{step}")
    git(repo, "checkout", "-q", "main")
    (tmp_path / "probe.txt").write_text("w1 w2 w3\nw4 w5 w6 w7\n")
    opts = ["--fps", "2", "--size", "160x90", "-q", "--no-cache", "--model-config", model_dir,
            "--tokenizer", model_dir, "--prompt", "w1 w2", "--max-new-tokens", "3",
            "--points", "activations", "--probe", tmp_path / "probe.txt"]
    remote = cli("render", "hf://testorg/gpt", tmp_path / "hub.gif", *opts)
    assert remote.exit_code == 0, remote.output
    assert f"--prompt runs every keyframe's checkpoint whole: fetching {human_bytes(total)}" in remote.output
    local = cli("render", here, tmp_path / "local.gif", *opts)
    assert local.exit_code == 0, local.output
    assert np.array_equal(decode(tmp_path / "local.gif"), decode(tmp_path / "hub.gif"))
    said = [json.loads((tmp_path / f"{n}.gif.json").read_text())["completions"]["checkpoints"]
            for n in ("hub", "local")]
    assert [c["completions"] for c in said[0]] == [c["completions"] for c in said[1]]
