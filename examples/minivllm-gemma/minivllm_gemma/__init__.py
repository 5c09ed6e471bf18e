"""minivllm-gemma: registers Gemma 1 with minivllm through the ``minivllm`` entry-point group."""

import minivllm


@minivllm.hookimpl
def register_models(register):
    # the Hugging Face architecture name of config.json; a "module:attr" string imports on first use
    register("GemmaForCausalLM", "minivllm_gemma.model:GemmaForCausalLM")
