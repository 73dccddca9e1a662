"""A network other than the preset's own trains with AdamW at 5e-3, batch 32 (the presets' SGD at lr 0.3 is
tuned for their batch-normalised networks); the run records which recipe it used."""

from __future__ import annotations

from cnnkit.tasks.classify.config import PRESETS, USER_NETWORK, TrainConfig, preset


def test_the_presets_own_network_keeps_the_preset():
    for name in PRESETS:
        cfg = preset(name)
        assert (cfg.optimizer, cfg.lr, cfg.recipe) == ("sgd", PRESETS[name]["lr"], name)
        assert preset(name, model=PRESETS[name]["model"]).recipe == name


def test_another_network_gets_the_user_network_recipe_and_records_it():
    for model in ("keras_mnist_convnet", "lenet5", "net.py:build", "spec.yaml"):
        cfg = preset("fast", model=model)
        assert (cfg.optimizer, cfg.lr, cfg.batch_size) == ("adamw", 5e-3, 32)
        assert (cfg.optimizer, cfg.lr, cfg.batch_size) == tuple(
            USER_NETWORK[k] for k in ("optimizer", "lr", "batch_size")
        )
        assert cfg.recipe == "fast+user-network" and cfg.to_dict()["recipe"] == "fast+user-network"
        assert (cfg.epochs, cfg.ema) == (PRESETS["fast"]["epochs"], 0.99)  # the rest is the preset's
        assert (cfg.prune, cfg.val_every) == (0.0, None)  # tuned for the preset's own network only
    mine = preset("fast", model="lenet5", lr=0.05, optimizer="sgd")  # what the user sets wins
    assert (mine.optimizer, mine.lr, mine.recipe) == ("sgd", 0.05, "fast+user-network")
    assert TrainConfig.from_dict({**preset("fast").to_dict()}).recipe == "fast"  # stored and read back


def test_lenet5_takes_mnist_padded_to_its_32x32_and_the_run_keeps_the_padding(data_dir, tmp_path, capsys):
    import json

    import torch

    import cnnkit
    from cnnkit.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", "lenet5", "--data-dir", str(data_dir), "--subset", "2048", "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--threads", "1", "--batch-size", "64", "--no-tta"]) == 0
    said = capsys.readouterr().out
    assert "lenet5 takes 32x32 inputs: the 28x28 images get 2 px of black on every side" in said, said
    model = cnnkit.load(out)
    assert (model.pad, model.input_size, model.net_input_size) == (2, (1, 28, 28), (1, 32, 32))
    assert model.info["pad"] == 2 and model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert main(["eval", str(out), "--data-dir", str(data_dir), "--format", "json"]) == 0
    acc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"]
    assert acc > 0.5, acc  # 2,048 digits, one epoch (0.82 to 0.85 measured with seeds 0, 1, 2)
    val = float(said.split("done: val acc ")[1].split("%")[0]) / 100
    assert abs(acc - val) < 0.08, (acc, val)  # the padding is the same in training and in eval


def test_a_network_that_cannot_take_the_images_is_one_line_before_training(data_dir, tmp_path, capsys):
    from cnnkit.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", "alexnet", "--data-dir", str(data_dir), "--subset", "256", "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--threads", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "alexnet cannot run on the data's 1x28x28 images" in err and "\n" not in err, err
    assert not out.exists()
