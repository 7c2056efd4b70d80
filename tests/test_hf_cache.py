"""The KV-cache argument is named for the installed transformers (``cache`` from 5.24, ``past_key_values`` before)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from compression.hf_cache import cache_arg, hook_cache, returned_cache


class OldStyle(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return input_ids


class NewStyle(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None):
        return input_ids


class Output(OrderedDict):
    """Like transformers' ModelOutput: a dict of the fields that are set, with attribute access."""

    def __getattr__(self, name):
        return self[name]


@pytest.mark.parametrize(("module", "name"), [(OldStyle(), "past_key_values"), (NewStyle(), "cache")])
def test_cache_arg_uses_the_name_the_forward_takes(module, name):
    marker = object()
    assert cache_arg(module, marker) == {name: marker}
    module(input_ids=1, **cache_arg(module, marker))  # accepted by the forward


def test_hook_cache_reads_either_name():
    marker = object()
    assert hook_cache({"cache": marker, "hidden_states": 0}) is marker
    assert hook_cache({"past_key_values": marker}) is marker
    assert hook_cache({"hidden_states": 0}) is None


def test_returned_cache_reads_either_output_field():
    marker = object()
    assert returned_cache(Output(logits=0, cache=marker)) is marker
    assert returned_cache(Output(logits=0, past_key_values=marker)) is marker


def test_the_installed_llama_takes_what_cache_arg_names(tiny_llama):
    """On the installed transformers, a cache handed over by name comes back extended (no silent drop)."""
    model = tiny_llama(num_hidden_layers=2)
    first = model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
    cache = returned_cache(first)
    second = model(input_ids=torch.tensor([[8]]), use_cache=True, **cache_arg(model, cache))
    assert returned_cache(second).get_seq_length() == 4
