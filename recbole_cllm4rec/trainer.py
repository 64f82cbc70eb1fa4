"""CLLM4RecTrainer: stage 1 pretraining, stage 2 finetuning with RecBole's validation, and resume.

Stage 1 (pretraining) is a fixed list of passes over the corpora: ``content_warmup_epochs`` content
passes, then ``pretrain_rounds`` rounds of one collaborative and one content pass (a dataset without
text has collaborative passes only). Stage 2 (finetuning) runs ``epochs`` recommendation epochs with
RecBole's per-epoch validation, early stopping and best-model selection; with
``finetune_content_passes`` each finetuning epoch is followed by a content pass regularised toward the
finetuned embeddings, as in the reference code.

Multi-process training (RecBole's ``run(..., nproc=N)``; gloo on CPUs, see ``compat``): every process
builds the same batches, takes its share of the documents of each batch, scales its loss by its share of
the batch's loss terms, and the gradients are summed across processes before every optimizer step. The
step is therefore the single-process step on the same batch, except that the mutual regulariser's mean
over distinct ids is taken within each process's share. Only rank 0 writes checkpoints.

Every pass draws its randomness (batch order, masks, content windows) from a generator seeded by
``seed`` and the pass's position in the schedule, so a run resumed from its last checkpoint repeats
exactly what an uninterrupted run would have done. After every pass the trainable state (ID
embeddings, optimizer, stage, position, early-stopping state) is written atomically to
``<checkpoint_dir>/<run name>-last.pth``; the best finetuned model goes to ``-best.pth`` in RecBole's
checkpoint format, so ``Trainer.evaluate`` and ``load_data_and_model`` read it as usual.
"""

import glob
import hashlib
import json
import math
import os
import pickle
from time import time

import torch
import torch.distributed as dist
from recbole.trainer import Trainer
from recbole.utils import early_stopping, set_color
from tqdm import tqdm

from recbole_cllm4rec.corpus import bucket_batches

ESTIMATE_AFTER_S = 20  # seconds of the first pass measured before the run's time is estimated
FORWARD_SPEEDUP = 3  # a scoring token (forward only) counted at a third of a training token's time


def format_duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# Keys that do not change what a run computes; they are left out of the run's identity.
NON_IDENTITY_KEYS = {"resume", "checkpoint_dir", "data_path", "show_progress", "state", "log_wandb", "gpu_id", "device",
                     "eval_batch_size", "eval_batch_tokens", "worker", "tensorboard", "local_rank", "ip", "port",
                     "offset", "verbose"}


FINETUNE_LR_DECAYS = {
    "none": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def id_table_adam(model, learning_rate, weight_decay=0.0, user_learning_rate_scale=1.0, lazy_users=False):
    """Adam over ``model``'s trainable ID tables. Fused (one kernel over all parameters) where torch has it for
    the device: the tables are dense (users x hidden, items x hidden), and a per-tensor loop made the update a
    large share of a small finetuning step. The user tables run
    at ``user_learning_rate_scale`` times the rate: a user token gets one update per pass, an item token one
    per prompt it appears in. With ``user_table_updates: lazy`` the user tables take a lazy Adam instead
    (``LazyUserRowsAdam``)."""
    fused = model.device.type in ("cpu", "cuda")
    users = [model.collaborative_user_embedding.weight, model.content_user_embedding.weight]
    others = [parameter for parameter in model.trainable_parameters() if not any(parameter is user for user in users)]
    user_learning_rate = learning_rate * user_learning_rate_scale
    # initial_lr: where the decay of finetune_lr_decay starts from
    groups = [{"params": others, "lr": learning_rate, "initial_lr": learning_rate},
              {"params": users, "lr": user_learning_rate, "initial_lr": user_learning_rate}]
    if lazy_users:  # options.check_options refuses weight_decay with it
        return LazyUserRowsAdam(*groups, fused=fused)
    return torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay, fused=fused)


def optimizer_for(config, model, learning_rate):
    """The trainer's optimizer over ``model``'s ID tables at ``learning_rate``, set up as ``config`` says."""
    return id_table_adam(model, learning_rate, config["weight_decay"], config["user_learning_rate_scale"],
                         lazy_users=config["user_table_updates"] == "lazy")


class LazyUserRowsAdam:
    """Adam whose user rows move only in the steps whose batch holds that user.

    The dense parameters (item tables, scales, the layer mix) take torch's Adam as with dense updates. The user
    tables' gradients are sparse (``nn.Embedding(sparse=True)``) and take torch's ``SparseAdam``: the rows of the
    batch's users are updated, with their moments, and every other row stays as it is. Dense Adam instead moves
    every row at every step, also with a zero gradient: a user's moments keep carrying it for the steps after
    its prompt (about 1 / (1 - beta1) = 10 of them), and each step reads and writes the whole user table (13 M
    of the cpu profile's 20 M trained numbers) and fills its dense gradient. Same hyperparameters (betas 0.9,
    0.999, eps 1e-8); the bias correction counts every step, and eps is added before it (``SparseAdam``'s
    form), so a coordinate whose gradient is near eps takes a slightly smaller step than in ``Adam``."""

    def __init__(self, dense_group, user_group, fused):
        self.dense = torch.optim.Adam([dense_group], fused=fused)
        self.users = torch.optim.SparseAdam([user_group])

    @property
    def param_groups(self):
        return self.dense.param_groups + self.users.param_groups

    def zero_grad(self, set_to_none=True):
        self.dense.zero_grad(set_to_none=set_to_none)
        self.users.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.dense.step()
        self.users.step()

    def state_dict(self):
        return {"dense": self.dense.state_dict(), "users": self.users.state_dict()}

    def load_state_dict(self, state):
        self.dense.load_state_dict(state["dense"])
        self.users.load_state_dict(state["users"])


class CLLM4RecTrainer(Trainer):
    def __init__(self, config, model):
        # the checkpoints carry the config: absolute paths let load_data_and_model find the data from anywhere
        config["data_path"] = os.path.abspath(config["data_path"])
        super().__init__(config, model)
        self.pretrain_learning_rate = config["pretrain_learning_rate"]
        self.finetune_learning_rate = config["learning_rate"]
        self.finetune_lr_decay = config["finetune_lr_decay"] or "none"
        self.plateau_decay_factor = config["plateau_decay_factor"]
        self.plateau_factor = 1.0  # the rate's multiple under plateau decay: halved (by default) at every stall
        self.content_warmup_epochs = config["content_warmup_epochs"]
        self.pretrain_rounds = config["pretrain_rounds"]
        self.finetune_content_passes = config["finetune_content_passes"]
        self.train_batch_tokens = config["train_batch_tokens"]
        self.resume = config["resume"]
        self.corpus = model.corpus  # the documents of every pass; the model gives their losses
        self.show_progress = config["show_progress"]
        self.seed = config["seed"]
        self.run_name = f"{config['model']}-{config['dataset']}-{self.run_signature(config)}"
        self.last_checkpoint_file = os.path.join(self.checkpoint_dir, f"{self.run_name}-last.pth")
        self.saved_model_file = os.path.join(self.checkpoint_dir, f"{self.run_name}-best.pth")
        self.pretrain_schedule = self._pretrain_schedule()
        self.passes_done = 0  # position in pretrain_schedule
        self.stage = "pretrain"
        self.best_valid_result = None
        self.time_estimate_pending = True
        self.measured_rates = {}  # tokens per second by pass kind, and scoring
        self.loss_history = []  # (stage, pass name, epoch, language loss, regularisation)

    @staticmethod
    def run_identity(config):
        """Everything that changes the computation, as text per key."""
        final = config.final_config_dict
        return {key: repr(final[key]) for key in sorted(final) if key not in NON_IDENTITY_KEYS}

    @staticmethod
    def run_signature(config):
        """A short hash of the run's identity, so checkpoints of other runs never mix."""
        identity = CLLM4RecTrainer.run_identity(config)
        return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]

    def _pretrain_schedule(self):
        has_content = self.corpus.has_content
        schedule = ["content"] * self.content_warmup_epochs if has_content else []
        for _ in range(self.pretrain_rounds):
            schedule += ["collaborative", "content"] if has_content else ["collaborative"]
        return schedule

    def _generator(self, stage, position):
        offset = {"pretrain": 0, "finetune": 1_000_003, "finetune_content": 2_000_003}[stage]
        return torch.Generator().manual_seed(self.seed * 7_919 + offset + position)

    # ----- one pass --------------------------------------------------------------------------------
    def _run_pass(self, kind, generator, optimizer, description):
        documents, held_out = self.corpus.pass_documents(kind, generator)
        batches = bucket_batches([len(document.tokens) for document in documents], self.train_batch_tokens, generator)
        self.model.train()
        totals, steps, tokens_done, started = torch.zeros(2), 0, 0, time()
        progress = tqdm(batches, desc=set_color(description, "pink"), ncols=100, disable=not self.show_progress)
        for batch in progress:
            tokens_done += sum(len(documents[k].tokens) for k in batch)
            batch = batch[self.rank :: self.world_size]
            if len(batch):
                language_loss, regularization, terms = self.model.document_loss(
                    kind, [documents[k] for k in batch], [held_out[k] for k in batch] if held_out is not None else None
                )
            else:  # this process has no share of a tiny batch; it still joins the gradient sum
                language_loss = regularization = torch.zeros(())
                terms = 0
            share = self._share_of_terms(terms)
            loss = language_loss + regularization
            self._check_nan(loss)
            optimizer.zero_grad(set_to_none=True)
            if len(batch):
                (loss * share).backward()
            self._sum_gradients_across_processes()
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), **self.clip_grad_norm)
            optimizer.step()
            self.model.constrain_id_embeddings()
            step_losses = torch.tensor([float(language_loss.detach()), float(regularization.detach())])
            totals += step_losses
            steps += 1
            elapsed = time() - started
            progress.set_postfix(loss=f"{float(step_losses[0]):.4f}", tok_s=f"{tokens_done / max(elapsed, 1e-9):.0f}")
            if self.time_estimate_pending and (elapsed >= ESTIMATE_AFTER_S or steps == len(batches)):
                self.time_estimate_pending = False
                self.measured_rates.setdefault(kind, tokens_done / max(elapsed, 1e-9))
                self._log_time_estimate(f"measured over the first {steps} batches")
        self.measured_rates[kind] = tokens_done / max(time() - started, 1e-9)  # the whole pass's rate
        return tuple((totals / max(steps, 1)).tolist())

    def _log_time_estimate(self, basis, epochs_done=0):
        """What is left of the schedule, in tokens of each kind, over the rates measured so far (a kind not
        measured yet at the rate of one that was; scoring at ``FORWARD_SPEEDUP`` times it until measured)."""
        tokens = self.corpus.tokens_per_pass()
        proxy = next(iter(self.measured_rates.values()))
        rate = {kind: self.measured_rates.get(kind, proxy) for kind in ("collaborative", "content", "recommendation")}
        rate["scoring"] = self.measured_rates.get("scoring", FORWARD_SPEEDUP * rate["recommendation"])
        finetune_kinds = ["recommendation"] + (["content"] if self.finetune_content_passes and
                                               self.corpus.has_content else [])
        pretrain_left = self.pretrain_schedule[self.passes_done:]
        epochs_left = self.epochs - self.start_epoch - epochs_done
        validations = epochs_left // self.eval_step if self.eval_step > 0 else 0
        seconds = (sum(tokens[kind] / rate[kind] for kind in pretrain_left)
                   + epochs_left * sum(tokens[kind] / rate[kind] for kind in finetune_kinds)
                   + (validations + 1) * tokens["scoring"] / rate["scoring"])
        rates = ", ".join(f"{kind} {value:.0f}" for kind, value in self.measured_rates.items())
        self.logger.info(
            set_color("Time estimate", "yellow") + f": about {format_duration(seconds)} for what is left "
            f"({len(pretrain_left)} pretraining passes, up to {epochs_left} finetuning epochs, {validations} validations "
            f"and the test), from the schedule's token counts at the rates {basis} (tokens/s: {rates}); early "
            f"stopping can end it sooner"
        )

    # ----- several processes --------------------------------------------------------------------------
    @property
    def distributed(self):
        return not self.config["single_spec"]

    @property
    def rank(self):
        return dist.get_rank() if self.distributed else 0

    @property
    def world_size(self):
        return dist.get_world_size() if self.distributed else 1

    def _share_of_terms(self, terms):
        if not self.distributed:
            return 1.0
        total = torch.tensor([float(terms)])
        dist.all_reduce(total)
        return terms / max(float(total), 1.0)

    def _sum_gradients_across_processes(self):
        """Sum gradients over processes; a parameter no process touched keeps ``grad = None`` (Adam skips it)."""
        if not self.distributed:
            return
        parameters = self.model.trainable_parameters()
        touched = torch.tensor([float(parameter.grad is not None) for parameter in parameters])
        dist.all_reduce(touched)
        for parameter, count in zip(parameters, touched.tolist()):
            if count == 0:
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)

    def _barrier(self):
        if self.distributed:
            dist.barrier()

    def _log_pass(self, stage, kind, index, losses, started):
        self.loss_history.append((stage, kind, index, *losses))
        self.logger.info(
            set_color(f"{stage} {kind} pass {index}", "green")
            + f" [{time() - started:.1f}s]: language loss {losses[0]:.4f}, mutual regularisation {losses[1]:.4f}"
            + self._layer_mix_note()
        )

    def _layer_mix_note(self):
        weights = self.model.layer_mix_weights()
        return "" if weights is None else ", layer mix " + " ".join(f"{weight:.3f}" for weight in weights.tolist())

    def _optimizer(self, learning_rate):
        return optimizer_for(self.config, self.model, learning_rate)

    def _decay_learning_rate(self, optimizer, epoch):
        """Set finetuning epoch ``epoch``'s rate from the schedule: a function of the epoch (or, under plateau decay,
        of the validations so far, which the progress checkpoint keeps), so a resumed run takes the same rates."""
        if self.finetune_lr_decay == "plateau":  # follows the run's validation, not the epoch count
            factor = self.plateau_factor
        else:
            factor = FINETUNE_LR_DECAYS[self.finetune_lr_decay](epoch / self.epochs)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    # ----- checkpoints ---------------------------------------------------------------------------------
    def _atomic_save(self, state, path):
        if self.rank != 0:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        torch.save(state, temporary, pickle_protocol=4)
        os.replace(temporary, path)

    def _save_progress(self, optimizer_state, epoch):
        self._atomic_save(
            {
                "run_name": self.run_name,
                "identity": self.run_identity(self.config),
                "stage": self.stage,
                "passes_done": self.passes_done,
                "epoch": epoch,
                "cur_step": self.cur_step,
                "best_valid_score": self.best_valid_score,
                "best_valid_result": self.best_valid_result,
                "plateau_factor": self.plateau_factor,
                "loss_history": self.loss_history,
                "state_dict": self.model.state_dict(),
                "optimizer": optimizer_state,
                "rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            self.last_checkpoint_file,
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """The best model, in RecBole's checkpoint format, holding only the trainable parameters."""
        self._atomic_save(
            {
                "config": self.config,
                "epoch": epoch,
                "cur_step": self.cur_step,
                "best_valid_score": self.best_valid_score,
                "state_dict": self.model.state_dict(),
                "other_parameter": self.model.other_parameter(),
                "optimizer": None,
            },
            self.saved_model_file,
        )
        if verbose:
            self.logger.info(set_color("Saving current best", "blue") + f": {self.saved_model_file}")

    def _load_progress(self):
        if not self.resume:
            return None
        if not os.path.isfile(self.last_checkpoint_file):
            self._refuse_other_configurations()
            return None
        try:
            state = torch.load(self.last_checkpoint_file, map_location=self.device, weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise ValueError(
                f"resume: the checkpoint {self.last_checkpoint_file} cannot be read ({str(error).splitlines()[0]}); "
                f"it is damaged or incomplete: move it away to start this run afresh"
            ) from None
        self.model.load_state_dict(state["state_dict"])
        self.stage, self.passes_done = state["stage"], state["passes_done"]
        self.cur_step, self.best_valid_score = state["cur_step"], state["best_valid_score"]
        self.best_valid_result, self.loss_history = state["best_valid_result"], state["loss_history"]
        self.plateau_factor = state.get("plateau_factor", 1.0)
        torch.set_rng_state(state["rng_state"].cpu())
        if state.get("cuda_rng_state") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([rng.cpu() for rng in state["cuda_rng_state"]])
        self.logger.info(
            set_color("Resuming", "blue")
            + f" {self.last_checkpoint_file}: stage {self.stage}, {self.passes_done} pretraining passes done, "
            f"finetuning epoch {state['epoch'] + 1}"
        )
        return state

    def _refuse_other_configurations(self):
        """``resume: True`` and no checkpoint of this configuration: where this model and dataset have checkpoints
        of other configurations, say how they differ and refuse, rather than start afresh unasked."""
        prefix = f"{self.config['model']}-{self.config['dataset']}-"
        others = sorted(glob.glob(os.path.join(glob.escape(self.checkpoint_dir), f"{prefix}*-last.pth")),
                        key=os.path.getmtime)
        if not others:
            return
        latest = others[-1]
        try:
            recorded = torch.load(latest, map_location="cpu", weights_only=False).get("identity")
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
            recorded = None
        if recorded is None:
            differences = "its settings were not recorded"
        else:
            current = self.run_identity(self.config)
            changed = [f"{key}: {recorded.get(key, 'unset')} -> {current.get(key, 'unset')}"
                       for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]
            differences = "it differs in " + "; ".join(changed[:8]) + ("; ..." if len(changed) > 8 else "")
        raise ValueError(f"resume: no checkpoint of this configuration in {self.checkpoint_dir}; the latest of "
                         f"{self.config['model']} on {self.config['dataset']} is {latest}, and {differences}. Resume "
                         f"with that run's settings, or pass --resume=False to start this one afresh")

    # ----- the two stages ------------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.show_progress = self.show_progress or show_progress
        self.eval_collector.data_collect(train_data)
        state = self._load_progress()
        self._pretrain(state)
        result = self._finetune(valid_data, state, verbose, saved, callback_fn)
        self._barrier()  # every process reads the best checkpoint rank 0 wrote
        return result

    def _pretrain(self, state):
        optimizer = self._optimizer(self.pretrain_learning_rate)
        if state is not None and state["stage"] == "pretrain":
            optimizer.load_state_dict(state["optimizer"])
        if self.stage != "pretrain":
            return
        while self.passes_done < len(self.pretrain_schedule):
            kind = self.pretrain_schedule[self.passes_done]
            started = time()
            losses = self._run_pass(
                kind,
                self._generator("pretrain", self.passes_done),
                optimizer,
                f"Pretrain {self.passes_done + 1}/{len(self.pretrain_schedule)} {kind}",
            )
            self._log_pass("pretrain", kind, self.passes_done, losses, started)
            self.passes_done += 1
            self._save_progress(optimizer.state_dict(), epoch=-1)
        self.stage = "finetune"
        self.start_epoch = 0

    def _finetune(self, valid_data, state, verbose, saved, callback_fn):
        optimizer = self._optimizer(self.finetune_learning_rate)
        content_optimizer = self._optimizer(self.pretrain_learning_rate)
        if state is not None and state["stage"] == "finetune":
            optimizer.load_state_dict(state["optimizer"]["finetune"])
            content_optimizer.load_state_dict(state["optimizer"]["content"])
            self.start_epoch = state["epoch"] + 1
        if state is not None and state["stage"] == "done":
            return self.best_valid_score, self.best_valid_result
        self.stage = "finetune"
        for epoch in range(self.start_epoch, self.epochs):
            self._decay_learning_rate(optimizer, epoch)
            started = time()
            losses = self._run_pass(
                "recommendation", self._generator("finetune", epoch), optimizer, f"Finetune {epoch + 1}/{self.epochs}"
            )
            self._log_pass("finetune", "recommendation", epoch, losses, started)
            self.train_loss_dict[epoch] = losses[0]
            if self.finetune_content_passes and self.corpus.has_content:
                started = time()
                losses = self._run_pass(
                    "content", self._generator("finetune_content", epoch), content_optimizer, "Finetune content"
                )
                self._log_pass("finetune", "content", epoch, losses, started)

            stop = False
            if valid_data and self.eval_step > 0 and (epoch + 1) % self.eval_step == 0:
                started = time()
                valid_score, valid_result = self._valid_epoch(valid_data, show_progress=self.show_progress)
                if "scoring" not in self.measured_rates:  # the first validation refines the estimate
                    self.measured_rates["scoring"] = self.corpus.tokens_per_pass()["scoring"] / (time() - started)
                    self._log_time_estimate("measured in the first finetuning epoch and validation", epoch + 1)
                self.best_valid_score, self.cur_step, stop, improved = early_stopping(
                    valid_score, self.best_valid_score, self.cur_step,
                    max_step=self.stopping_step, bigger=self.valid_metric_bigger,
                )
                if verbose:
                    self.logger.info(
                        set_color(f"epoch {epoch} evaluating", "green")
                        + f" [{time() - started:.1f}s]: {self.valid_metric}: {valid_score:.6f}"
                    )
                    self.logger.info(set_color("valid result", "blue") + f": {dict(valid_result)}")
                if not improved and self.finetune_lr_decay == "plateau":
                    self.plateau_factor *= self.plateau_decay_factor
                if improved:
                    self.best_valid_result = valid_result
                    if saved:
                        self._save_checkpoint(epoch, verbose=verbose)
                if callback_fn:
                    callback_fn(epoch, valid_score)
            elif saved and not valid_data:
                self._save_checkpoint(epoch, verbose=verbose)
            if stop or epoch == self.epochs - 1:
                self.stage = "done"
            self._save_progress({"finetune": optimizer.state_dict(), "content": content_optimizer.state_dict()}, epoch)
            if stop:
                if verbose:
                    self.logger.info(f"Finished training, best eval result in epoch {epoch - self.cur_step * self.eval_step}")
                break
        self.stage = "done"
        if saved and not os.path.isfile(self.saved_model_file):
            self._save_checkpoint(self.epochs - 1, verbose=verbose)
        return self.best_valid_score, self.best_valid_result

