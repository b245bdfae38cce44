"""Evaluation during training keeps the loss only: no (batch, sequence, vocabulary) logits are built or gathered,
which is what ran the original notebook out of memory at Gemma's 256k vocabulary."""


from writemypaper import config, train
from writemypaper.data import load_split


def test_evaluation_never_builds_full_logits(tiny_gemma2_dir, embedded_tokenizer, short_prepared, tmp_path):
    cfg = config.load_config("cpu-demo", ["training.per_device_eval_batch_size=4", "training.report_to=[]"], kind="train")
    tok = embedded_tokenizer
    train_ds, _ = train.tokenize_split(load_split(str(short_prepared), "train"), tok, None, 160, 8)
    eval_ds, _ = train.tokenize_split(load_split(str(short_prepared), "validation"), tok, None, 160, 8)
    trainer = train.build_trainer(cfg, str(tiny_gemma2_dir), tmp_path, train_ds, eval_ds, tok)
    assert trainer.args.prediction_loss_only

    # Spy on both ways logits could be made: the LM head module itself, and TRL's tiled log-prob kernel.
    import trl.trainer.utils as trl_utils

    head_calls, tiles = [], []
    hook = trainer.model.get_output_embeddings().register_forward_hook(lambda m, i, out: head_calls.append(out.shape))
    kernel = trl_utils._ChunkedLogProbFunction

    class Spy(kernel):
        @staticmethod
        def forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, *rest):
            tiles.append((hidden.shape[0], chunk_size))
            return kernel.forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, *rest)

    trl_utils._ChunkedLogProbFunction = Spy
    try:
        metrics = trainer.evaluate()
        prediction = trainer.predict(eval_ds)
    finally:
        trl_utils._ChunkedLogProbFunction = kernel
        hook.remove()
    assert metrics["eval_loss"] > 0 and prediction.predictions is None  # the loss, and nothing gathered
    assert head_calls == []  # the full-vocabulary head never ran over a sequence
    tokens_per_batch = 4 * max(len(x) for x in eval_ds["input_ids"])
    vocab = trainer.model.config.vocab_size
    # TRL's fused head scores only the answer positions, a slice of the vocabulary at a time
    assert tiles and all(n < tokens_per_batch and chunk < vocab for n, chunk in tiles)
