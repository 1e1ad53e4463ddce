"""driftline installed as a library: the wheel, in a fresh environment, runs a cycle from a user's own folder.

How the fresh environment gets the TF/TFX stack (about 3 GB): `uv venv` plus
`uv pip install --offline -c constraints.txt <the wheel>`, from uv's cache.
scripts/bootstrap.sh installs the same pins with uv, so that cache is warm on
every machine that ran `make venv` (CI included), and uv links the files from it
instead of copying: about 1 s here. Unlike a venv that borrows the main .venv's
site-packages through a .pth file, this resolves the wheel's own
`install_requires` against constraints.txt: the stack tested is the one
`pip install -c constraints.txt .` gives a user. Nothing is downloaded
(`--offline`): a cold cache fails with the fix.

What this proves about the wheel: every package the pipeline imports (a
subpackage left out of setup.py's `packages` fails the import), the `driftline`
console script and the LICENSE are in it; the script runs with its working
directory outside the repository and the repository off sys.path. And in that
mode no Beam step builds TFX's "tfx_ephemeral" sdist (a copy of the whole tfx
tree, ~1 s and 49 MB of /tmp never removed, once per Beam component per cycle):
the cycle's TMPDIR is searched for it.

Cost, measured on the 2-core dev machine with other work on its cores:
35-50 s in all (wheel ~1 s, install ~1 s, the rest the cycle's process,
which compiles the stack's modules it imports: the fresh venv holds no bytecode).
"""
import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a clone's working tree holds that no build should see: local venvs,
# earlier build outputs (setuptools reuses a stale build/lib), caches.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", "demo_home", "tmp")


def setup_py_version() -> str:
    """The version= keyword of setup.py's setup() call, read with ast (not the code under test)."""
    with open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            return next(k.value.value for k in node.keywords if k.arg == "version")
    raise AssertionError("setup.py has no setup(version=...)")


def find_uv():
    """uv where scripts/bootstrap.sh looks for it (PATH, ~/.local/bin, ~/.cargo/bin, `python3 -m uv`),
    plus next to the base Python of this venv; each candidate must actually run."""
    home = os.path.expanduser("~")
    candidates = [[shutil.which("uv")], [os.path.join(home, ".local", "bin", "uv")],
                  [os.path.join(home, ".cargo", "bin", "uv")], [os.path.join(sys.base_prefix, "bin", "uv")],
                  [shutil.which("python3"), "-m", "uv"]]
    for cmd in candidates:
        if cmd[0] and os.path.exists(cmd[0]):
            ok = subprocess.run(cmd + ["--version"], capture_output=True, text=True)
            if ok.returncode == 0:
                return cmd
    pytest.fail("uv not found (PATH, ~/.local/bin, ~/.cargo/bin, python3 -m uv): run scripts/bootstrap.sh "
                "(make venv), which installs it and fills its cache")


def _run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return done


PIPELINE_SCRIPT = textwrap.dedent('''
    """A user's pipeline script, as README "Using it from Python" shows, run from its own folder."""
    import json
    import sys

    from components.blessing_pusher import BlessingPusher
    from components.evaluator import DriftlineEvaluator
    from components.latency_validator import LatencyValidator
    from components.streaming_example_gen import StreamingExampleGen
    from components.warm_start_trainer import WarmStartTrainer
    from pipelines.config import default_config
    from pipelines.local_runner import run_cycle
    from pipelines.metadata import open_store
    from pipelines.simulator import SimulatorConfig, simulate
    from transforms import stream

    home = sys.argv[1]
    config = default_config(home).validate()
    # Twelve minutes: one closed ten-minute span.
    simulate(config.source.log_dir, SimulatorConfig(minutes=12, events_per_minute=200, seed=3))
    report = run_cycle(config)
    store = open_store(config.metadata_path)
    print(json.dumps({
        "modules": {m.__name__: m.__file__ for m in (sys.modules["pipelines"], sys.modules["components"],
                                                    sys.modules["transforms"])},
        "sys_path": sys.path,
        "spans": report.spans,
        "model_id": report.model_id,
        "models": [a.id for a in store.get_artifacts_by_type("Model")],
        "beam_args": config.beam_args(),
    }))
''')


def test_version_from_a_checkout(tmp_path):
    """`python -m pipelines.cli --version` in a checkout prints setup.py's version."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    done = _run([sys.executable, "-m", "pipelines.cli", "--version"], cwd=str(tmp_path), env=env)
    assert done.stdout.strip() == f"driftline {setup_py_version()}"


def test_installed_beam_args_name_beams_own_default_image():
    """The image named to keep TFX from building its sdist is the one Beam would default to anyway."""
    from apache_beam.transforms.environments import DockerEnvironment

    from pipelines.config import beam_default_sdk_image

    assert beam_default_sdk_image() == DockerEnvironment.default_docker_image()


@pytest.mark.e2e
def test_wheel_installs_into_a_fresh_venv_and_a_script_outside_the_repo_runs_a_cycle(tmp_path):
    # 1. The wheel, built from a copy of the working tree (what a fresh clone holds).
    source = tmp_path / "clone"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
          "-q", "-w", str(dist), str(source)], cwd=str(tmp_path))
    (wheel,) = glob.glob(str(dist / "driftline-*.whl"))
    wheel_version = os.path.basename(wheel).split("-")[1]
    assert wheel_version == setup_py_version()

    # 2. A fresh venv with the wheel and the pinned stack, from uv's cache only.
    uv = find_uv()
    venv = tmp_path / "venv"
    _run(uv + ["venv", "-q", "--python", sys.executable, str(venv)])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")}
    env["VIRTUAL_ENV"] = str(venv)
    install = subprocess.run(uv + ["pip", "install", "-q", "--offline", "-c", os.path.join(REPO_ROOT, "constraints.txt"),
                                   wheel], capture_output=True, text=True, env=env)
    assert install.returncode == 0, ("uv pip install --offline failed; if a package is missing from uv's cache, "
                                     "run scripts/bootstrap.sh (make venv), which fills it:\n" + install.stderr[-4000:])
    site = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))[0]
    # The LICENSE travels in the wheel's metadata.
    assert glob.glob(os.path.join(site, "driftline-*.dist-info", "licenses", "LICENSE")) or \
        glob.glob(os.path.join(site, "driftline-*.dist-info", "LICENSE"))

    # 3. The console script, from the venv's bin, in a folder of the user's.
    user_dir = tmp_path / "my_project"
    user_dir.mkdir()
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    version = _run([str(venv / "bin" / "driftline"), "--version"], cwd=str(user_dir), env=env)
    assert version.stdout.strip() == f"driftline {wheel_version}"

    # 4. The user's pipeline script runs one cycle; TMPDIR is where TFX would build its sdist.
    script = user_dir / "my_pipeline.py"
    script.write_text(PIPELINE_SCRIPT)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    done = _run([str(venv / "bin" / "python"), str(script), str(user_dir / "home")], cwd=str(user_dir), env=env,
                timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])

    for name, path in result["modules"].items():
        assert os.path.realpath(path).startswith(os.path.realpath(site)), f"{name} imported from {path}, not the wheel"
    assert not [p for p in result["sys_path"] if p and os.path.realpath(p) == os.path.realpath(REPO_ROOT)]
    assert len(result["spans"]) == 1
    assert result["model_id"] is not None and result["model_id"] in result["models"]
    assert not any(a.startswith("--setup_file") for a in result["beam_args"])
    ephemeral = glob.glob(str(scratch / "**" / "tfx_ephemeral*"), recursive=True)
    assert not ephemeral, f"TFX built its ephemeral sdist in the installed mode: {ephemeral}"
