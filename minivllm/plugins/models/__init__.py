"""Built-in model architectures."""

from minivllm.core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    register("LlamaForCausalLM", "minivllm.plugins.models.llama:LlamaForCausalLM")
    register("Qwen2ForCausalLM", "minivllm.plugins.models.qwen:Qwen2ForCausalLM")
    register("Qwen3ForCausalLM", "minivllm.plugins.models.qwen:Qwen3ForCausalLM")
