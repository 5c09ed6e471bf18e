# A chat template for the tiny checkpoints, whose tokenizer has none: "<role>content" lines, then "<assistant>".
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
