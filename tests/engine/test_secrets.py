"""Secrets a user gives a reward never leave memory: not in any file a run writes (configs, checkpoints, final/,
report, trackers' stores), not in what `rlkit push` hands to the Hub client, not on the console; a resume gets
them again from the environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY_RECIPE
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from rlkit.config import load_recipe, to_yaml
from rlkit.secrets import NOT_SAVED, redacted, scrub

SECRET, TOKEN = "sk-live-7f3a9c1e5b2d4f60", "tok-91c0ffee2b7d"
REWARD_FILE = '''
import os
from rlkit.rewards.base import RewardOutput

class KeyedReward:
    secret_kwargs = ("credential",)  # declared: its name does not look like one

    def __init__(self, credential: str, api_key: str = ""):
        if (credential, api_key) != (os.environ["WANT_CREDENTIAL"], os.environ["WANT_API_KEY"]):
            raise ValueError("wrong credentials")

    def __call__(self, batch):
        scores = batch.edited[:, 0].mean(dim=(1, 2))
        return RewardOutput(scores=scores, rationales=[f"red {float(s):.3f}" for s in scores])
'''
STEPS = ["sampler.num_steps=3", "algorithm.group_size=3", "algorithm.micro_batch=6", "train.log_every=1",
         "eval.every=2", "eval.max_prompts=2", "train.save_every=1"]


def _rlkit(args, cwd, env):
    done = subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stdout + done.stderr


def _leaks(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes()
                                                                      for s in (SECRET, TOKEN))]


def test_a_secret_reaches_no_file_no_tracker_no_push_and_no_console_and_the_run_resumes(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    (tmp_path / "my_reward.py").write_text(REWARD_FILE)
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TRACKIO_DIR": str(tmp_path / "trackio"), "WANT_CREDENTIAL": SECRET, "WANT_API_KEY": TOKEN,
           "PYTHONPATH": str(REPO / "tests")}
    reward = f"{{name: 'my_reward.py:KeyedReward', kwargs: {{credential: '{SECRET}', api_key: '{TOKEN}'}}}}"
    code, first = _rlkit(["run", str(TINY_RECIPE), f"output_dir={run}", "train.steps=2", *STEPS,
                          f"rewards=[{reward}]", f"eval.rewards=[{reward}]",
                          "logging.report_to=[tensorboard,wandb,trackio]"], tmp_path, env)
    assert code == 0, first[-3000:]
    assert "rewards.0.kwargs.credential' is written in the recipe" in first  # told what resuming will need
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.rewards[0].kwargs.credential == NOT_SAVED and saved.rewards[0].kwargs.api_key == NOT_SAVED

    code, refused = _rlkit(["resume", str(run), "train.steps=3"], tmp_path, env)
    assert code == 2 and "a secret the recipe gave as a literal" in refused
    env.update(CRED=SECRET, KEY=TOKEN)
    refs = [f"{where}.0.kwargs.{k}=${{oc.env:{var}}}" for where in ("rewards", "eval.rewards")
            for k, var in (("credential", "CRED"), ("api_key", "KEY"))]
    code, resumed = _rlkit(["resume", str(run), "train.steps=3", *refs], tmp_path, env)
    assert code == 0 and "resumed from" in resumed, resumed[-3000:]
    kept = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))  # unresolved
    assert kept["rewards"][0]["kwargs"]["credential"] == "${oc.env:CRED}"

    from huggingface_hub import HfApi

    from rlkit.cli import main

    uploaded = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploaded.update(
        {p.name: p.read_bytes() for p in Path(kw["folder_path"]).rglob("*") if p.is_file()}))
    assert main(["push", str(run), "me/keyed"]) == 0
    assert "config.yaml" in uploaded and "README.md" in uploaded
    assert [name for name, data in uploaded.items() if SECRET.encode() in data or TOKEN.encode() in data] == []

    assert (run / "wandb").is_dir() and (tmp_path / "trackio").is_dir() and (run / "report.html").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    said = [t for t in events.Tags()["tensors"] if t.startswith("rationales/")]  # the reward's words, as text
    assert said and b"red " in events.Tensors(said[0])[0].tensor_proto.string_val[0]
    assert _leaks(tmp_path) == []  # run directory (tensorboard, wandb, checkpoints, final, report), trackio
    for text in (first, refused, resumed):
        assert SECRET not in text and TOKEN not in text


def test_declared_and_credential_named_kwargs_are_redacted_at_any_depth(monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", SECRET)
    judge = ("{name: vlm_judge, kwargs: {base_url: 'http://127.0.0.1:9/v1', api_key: '${oc.env:JUDGE_API_KEY}', "
             "request: {extra_headers: {Authorization: 'Bearer " + TOKEN + "'}}, max_tokens: 4}}")
    remote = f"{{name: remote, kwargs: {{url: 'http://x:1', token: {TOKEN}}}}}"
    cfg = load_recipe(str(TINY_RECIPE), [f"rewards=[{judge}]", f"eval.rewards=[{remote}]"])
    assert cfg.rewards[0].kwargs.api_key == SECRET  # in memory, the value
    text = to_yaml(cfg)
    assert SECRET not in text and TOKEN not in text
    out = redacted(cfg)
    assert out["rewards"][0]["kwargs"]["api_key"] == "${oc.env:JUDGE_API_KEY}"  # a reference stays one
    assert out["rewards"][0]["kwargs"]["request"]["extra_headers"]["Authorization"] == NOT_SAVED
    assert out["rewards"][0]["kwargs"]["max_tokens"] == 4  # not a credential
    assert out["eval"]["rewards"][0]["kwargs"]["token"] == NOT_SAVED
    assert scrub(f"401 for key {SECRET}") == "401 for key ***"


@settings(max_examples=40, deadline=None)
@given(value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=40),
       key=st.sampled_from(["api_key", "token", "password", "secret", "hf_token", "OPENAI_API_KEY", "access_key"]),
       depth=st.integers(0, 2))
def test_any_credential_named_value_is_kept_out_of_the_saved_recipe(value, key, depth):
    value = f"zq{value}"  # a string the rest of the recipe cannot hold by chance (e.g. 'instruct')
    kwargs: dict = {key: value}
    for level in range(depth):
        kwargs = {f"level{level}": kwargs}
    cfg = OmegaConf.merge(load_recipe(str(TINY_RECIPE)), {"rewards": [{"name": "target_color", "kwargs": kwargs}]})
    assert value not in to_yaml(cfg)
