"""--push_to_hub without network: huggingface_hub's HTTP client gets a mock transport of the Hub API."""

import base64
import hashlib
import json

import httpx2
import pytest
from huggingface_hub import set_client_factory

import train
from modeling_astro import publishing

pytest_plugins = ["training_fixtures"]


class FakeHub:
    """Answers the Hub endpoints that `create_repo` + `upload_folder` call and records what gets committed."""

    def __init__(self):
        self.created, self.validated_yaml, self.committed = [], [], {}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{body['organization']}/{body['name']}"})
        if path == "/api/validate-yaml":
            self.validated_yaml.append(json.loads(request.content)["content"])
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(
                200,
                json={
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]
                },
            )
        if "/commit/" in path:
            for line in request.content.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    self.committed[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            return httpx2.Response(
                200,
                json={
                    "commitUrl": "https://huggingface.co/user/astro/commit/0123",
                    "commitOid": "0123" * 10,
                    "pullRequestUrl": None,
                },
            )
        return httpx2.Response(404, json={"error": f"{request.method} {path} is not part of the fake Hub"})


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    yield hub
    set_client_factory(httpx2.Client)


def test_push_commits_exactly_the_model_folder(tiny_trained_checkpoint, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    url = publishing.push_to_hub(tiny_trained_checkpoint, "user/astro")
    assert url == "https://huggingface.co/user/astro/commit/0123"
    assert [(body["organization"], body["name"]) for body in fake_hub.created] == [("user", "astro")]
    expected = {
        path.name for path in tiny_trained_checkpoint.iterdir() if path.is_file() and not path.name.endswith(".tmp")
    }
    assert set(fake_hub.committed) == expected, "the whole model folder and nothing else (no checkpoints/)"
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_astro.py",
        "data_collator_astro.py",
        "README.md",
    } <= expected
    for name in ("config.json", "model.safetensors", "README.md"):
        assert fake_hub.committed[name] == (tiny_trained_checkpoint / name).read_bytes()
    committed = {path: hashlib.sha256(content).hexdigest() for path, content in fake_hub.committed.items()}
    on_disk = {name: hashlib.sha256((tiny_trained_checkpoint / name).read_bytes()).hexdigest() for name in expected}
    assert committed == on_disk, "the commit operations: exactly these paths with exactly these contents"
    assert fake_hub.validated_yaml and "library_name: transformers" in fake_hub.validated_yaml[0]


def test_train_cli_pushes_after_training(tiny_survey, tmp_path, fake_hub, monkeypatch):
    from training_fixtures import tiny_train_args

    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    output = train.main(
        tiny_train_args(
            tiny_survey,
            tmp_path / "model",
            "--max_steps",
            "5",
            "--save_steps",
            "2",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "user/astro",
        )
    )
    assert "README.md" in fake_hub.committed and "model.safetensors" in fake_hub.committed
    assert not [name for name in fake_hub.committed if name.startswith("checkpoints/")]
    assert (output / "checkpoints").is_dir()


def test_push_without_a_repository_id_is_refused(tiny_survey, tmp_path):
    from training_fixtures import tiny_train_args

    with pytest.raises(train.TrainingInputError, match="--hub_model_id"):
        train.main(tiny_train_args(tiny_survey, tmp_path / "model", "--push_to_hub", "true"))
