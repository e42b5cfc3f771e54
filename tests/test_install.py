"""requirements-lock.txt, which scripts/setup.sh installs in two parallel halves: written by
scripts/lock_requirements.py from requirements.txt, it must pin requirements.txt's own versions,
name requirements.txt's hash (else setup.sh resolves instead), and be what this venv holds."""
import hashlib
import importlib.metadata
import re

from conftest import REPO, script

LOCK = REPO / "requirements-lock.txt"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)")


def pins(text):
    """{normalised name: version} of a requirements file's `name==version` lines."""
    return {re.sub(r"[-_.]+", "-", m[1]).lower(): m[2] for m in map(PIN.match, text.splitlines()) if m}


def test_the_lock_pins_requirements_txt_and_names_its_hash():
    lock = LOCK.read_text()
    wanted = pins((REPO / "requirements.txt").read_text())
    locked = pins(lock)
    assert wanted and {name: locked.get(name) for name in wanted} == wanted
    digest = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()
    assert f"# requirements.txt sha256: {digest}\n" in lock, "requirements.txt changed: run scripts/lock_requirements.py"
    assert lock.count("\n# half 1: ") == 1 and lock.count("\n# half 2: ") == 1


def test_this_venv_holds_the_lock():
    """What scripts/setup.sh installed is the lock, version for version (its Linux-only pins where they apply)."""
    import platform
    locked = {m[1]: m[2] for line in LOCK.read_text().splitlines() if (m := PIN.match(line))
              and ('platform_system == "Linux"' not in line or platform.system() == "Linux")}
    assert {name: importlib.metadata.version(name) for name in locked} == locked


def test_lock_text_balances_the_halves_and_marks_the_cuda_runtime():
    lock_text = script("scripts.lock_requirements").lock_text
    # name: [version, bytes, files]; a file costs as much as 36 kB, so sympy's 10,000 weigh 360 MB
    mb = 1_000_000
    packages = {"torch": ["2.14.1", 1000 * mb, 0], "nvidia-cudnn-cu13": ["9.0", 900 * mb, 0],
                "triton": ["3.8.0", 600 * mb, 0], "numpy": ["2.4.6", 300 * mb, 0], "sympy": ["1.14.0", 100 * mb, 10_000],
                "tqdm": ["4.70.1", 5 * mb, 0], "pip": ["26.3", 50 * mb, 0], "setuptools": ["80", 10 * mb, 0]}
    text = lock_text(packages, "ab" * 32, "Linux x86_64, Python 3.11")
    assert "# platform: Linux x86_64, Python 3.11\n" in text and f"# requirements.txt sha256: {'ab' * 32}\n" in text
    first, second = text.split("# half 2")
    # costs 1000 | 900, 600 | 460 (sympy) | 300 | 5: torch, then cudnn and triton, then the rest to the cheaper half
    assert re.findall(r"^\w[\w.-]*", first.split("# half 1")[1], re.M) == ["numpy", "sympy", "torch"]
    assert re.findall(r"^\w[\w.-]*", second, re.M) == ["nvidia-cudnn-cu13", "tqdm", "triton"]
    assert "# half 1: 3 packages, 1.40 GB installed" in first
    assert 'nvidia-cudnn-cu13==9.0 ; platform_system == "Linux"' in second and "\ntorch==2.14.1\n" in first
    assert "pip==" not in text and "setuptools==" not in text  # setup.sh upgrades them before the lock


def test_setup_sh_names_the_platform_as_the_lock_does():
    """setup.sh compares its venv's platform line with the lock's header: the same expression."""
    inventory = script("scripts.lock_requirements").INVENTORY
    expression = re.search(r'platform_line = (f".*")', inventory)[1]
    assert f"print({expression})" in (REPO / "scripts" / "setup.sh").read_text()
