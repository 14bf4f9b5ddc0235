"""Which transformers model families train packed exactly as unpacked: written by `make models`
(benchmarks/model_matrix.py) from a run over every causal-LM architecture; do not edit by hand.

FAMILIES maps a config's model_type to {"status": "verified" | "refused", "reason": str}.
"""

TRANSFORMERS_VERSION = '5.24.0'
FAMILIES: dict[str, dict[str, str]] = {'afmoe': {'reason': '', 'status': 'verified'},
 'apertus': {'reason': '', 'status': 'verified'},
 'apertus1p5_text': {'reason': '', 'status': 'verified'},
 'arcee': {'reason': '', 'status': 'verified'},
 'aria_text': {'reason': '', 'status': 'verified'},
 'axk1': {'reason': '', 'status': 'verified'},
 'axk2': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, where '
                    'Packer cannot keep the packed examples apart',
          'status': 'refused'},
 'bailing_hybrid': {'reason': 'its layers of type linear_attention mix tokens outside the attention '
                              'function, where Packer cannot keep the packed examples apart',
                    'status': 'refused'},
 'bamba': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, where '
                     'Packer cannot keep the packed examples apart',
           'status': 'refused'},
 'bart': {'reason': 'packed differs from unpacked (logits 5.8e-01, loss 3.6e-04, gradients 9.8e-01 '
                    '(model.decoder.layers.10.final_layer_norm.weight)): something outside attention mixes '
                    'tokens across examples or ignores position_ids',
          'status': 'refused'},
 'beam': {'reason': '', 'status': 'verified'},
 'bert': {'reason': '', 'status': 'verified'},
 'bert-generation': {'reason': '', 'status': 'verified'},
 'big_bird': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                        'apart',
              'status': 'refused'},
 'bigbird_pegasus': {'reason': 'packed differs from unpacked (logits 3.2e-01, loss 4.6e-04, gradients '
                               '1.2e+00 (model.decoder.layers.10.self_attn.out_proj.weight)): something '
                               'outside attention mixes tokens across examples or ignores position_ids',
                     'status': 'refused'},
 'biogpt': {'reason': '', 'status': 'verified'},
 'bitnet': {'reason': '', 'status': 'verified'},
 'blenderbot': {'reason': 'packed differs from unpacked (logits 1.2e+00, loss 1.1e-03, gradients 1.3e+00 '
                          '(model.decoder.layers.0.self_attn_layer_norm.bias)): something outside attention '
                          'mixes tokens across examples or ignores position_ids',
                'status': 'refused'},
 'blenderbot-small': {'reason': 'packed differs from unpacked (logits 1.2e-02, loss 2.1e-03, gradients '
                                '5.1e-01 (model.decoder.embed_tokens.weight)): something outside attention '
                                'mixes tokens across examples or ignores position_ids',
                      'status': 'refused'},
 'bloom': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                     'apart',
           'status': 'refused'},
 'blt': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'camembert': {'reason': '', 'status': 'verified'},
 'codegen': {'reason': '', 'status': 'verified'},
 'cohere': {'reason': '', 'status': 'verified'},
 'cohere2': {'reason': '', 'status': 'verified'},
 'cohere2_moe': {'reason': '', 'status': 'verified'},
 'cohere_compass_text': {'reason': 'not verified: a tiny CohereCompassForCausalLM does not run here even '
                                   "with eager attention: KeyError: 'full_attention'",
                         'status': 'refused'},
 'cpmant': {'reason': 'not verified: a tiny CpmAntForCausalLM does not run here even with eager attention: '
                      'IndexError: Target 870 is out of bounds.',
            'status': 'refused'},
 'ctrl': {'reason': '', 'status': 'verified'},
 'cwm': {'reason': '', 'status': 'verified'},
 'data2vec-text': {'reason': '', 'status': 'verified'},
 'dbrx': {'reason': 'not verified: a tiny DbrxForCausalLM does not run here even with eager attention: '
                    "AttributeError: 'DbrxAttentionConfig' object has no attribute 'rope_theta'",
          'status': 'refused'},
 'deepseek_v2': {'reason': '', 'status': 'verified'},
 'deepseek_v3': {'reason': '', 'status': 'verified'},
 'deepseek_v32': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, '
                            'where Packer cannot keep the packed examples apart',
                  'status': 'refused'},
 'deepseek_v4': {'reason': 'its layers of type compressed_sparse_attention, heavily_compressed_attention mix '
                           'tokens outside the attention function, where Packer cannot keep the packed '
                           'examples apart',
                 'status': 'refused'},
 'diffllama': {'reason': '', 'status': 'verified'},
 'doge': {'reason': 'packer attention cannot run DogeAttention with a 4D attention mask; pass packed batches '
                    'as position_ids or cu_seq_lens_q, without an attention mask',
          'status': 'refused'},
 'dory': {'reason': '', 'status': 'verified'},
 'dots1': {'reason': '', 'status': 'verified'},
 'dots3_note': {'reason': 'not verified: its smallest config here still needs over 4 GB',
                'status': 'refused'},
 'dots3_note_text': {'reason': 'not verified: no tiny config could be made here: '
                               "AmbiguousGlobalPerLayerAttributeError: 'num_attention_heads' is a per-layer "
                               'attribute and may vary across layers. Access it via the individual layer '
                               'configs ...',
                     'status': 'refused'},
 'electra': {'reason': '', 'status': 'verified'},
 'emu3': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'ernie': {'reason': '', 'status': 'verified'},
 'ernie4_5': {'reason': '', 'status': 'verified'},
 'ernie4_5_moe': {'reason': '', 'status': 'verified'},
 'exaone': {'reason': '', 'status': 'verified'},
 'exaone4': {'reason': '', 'status': 'verified'},
 'exaone_moe': {'reason': '', 'status': 'verified'},
 'falcon': {'reason': 'transformers does not run FalconForCausalLM through its attention interface '
                      "(KeyError: 'packer')",
            'status': 'refused'},
 'falcon_h1': {'reason': 'its layers of type hybrid mix tokens outside the attention function, where Packer '
                         'cannot keep the packed examples apart',
               'status': 'refused'},
 'falcon_mamba': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, '
                            'where Packer cannot keep the packed examples apart',
                  'status': 'refused'},
 'flex_olmo': {'reason': '', 'status': 'verified'},
 'flint': {'reason': '', 'status': 'verified'},
 'fuyu': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'gemma': {'reason': '', 'status': 'verified'},
 'gemma2': {'reason': '', 'status': 'verified'},
 'gemma3': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'gemma3_text': {'reason': '', 'status': 'verified'},
 'gemma3n': {'reason': 'not verified: a tiny Gemma3nForConditionalGeneration does not run here even with '
                       'eager attention: ImportError: ',
             'status': 'refused'},
 'gemma3n_text': {'reason': 'not verified: a tiny Gemma3nForCausalLM does not run here even with eager '
                            'attention: ValueError: The set of layer types producing a cache is different '
                            'than the set of layer types using them',
                  'status': 'refused'},
 'gemma4': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'gemma4_assistant': {'reason': 'not verified: no tiny config could be made here: '
                                'StrictDataclassClassValidationError: Class validation error for validator '
                                "'validate_architecture':",
                      'status': 'refused'},
 'gemma4_text': {'reason': 'not verified: no tiny config could be made here: '
                           "AmbiguousGlobalPerLayerAttributeError: 'head_dim' is a per-layer attribute and "
                           'may vary across layers. Access it via the individual layer configs instead '
                           '(e....',
                 'status': 'refused'},
 'gemma4_unified': {'reason': 'not verified: its smallest config here still needs over 4 GB',
                    'status': 'refused'},
 'gemma4_unified_assistant': {'reason': 'not verified: its smallest config here still needs over 4 GB',
                              'status': 'refused'},
 'gemma4_unified_text': {'reason': 'not verified: no tiny config could be made here: '
                                   "AmbiguousGlobalPerLayerAttributeError: 'head_dim' is a per-layer "
                                   'attribute and may vary across layers. Access it via the individual layer '
                                   'configs instead (e....',
                         'status': 'refused'},
 'git': {'reason': 'not verified: a tiny GitForCausalLM does not run here even with eager attention: '
                   'ValueError: Expected input batch_size (0) to match target batch_size (11).',
         'status': 'refused'},
 'glm': {'reason': '', 'status': 'verified'},
 'glm4': {'reason': '', 'status': 'verified'},
 'glm4_moe': {'reason': '', 'status': 'verified'},
 'glm4_moe_lite': {'reason': '', 'status': 'verified'},
 'glm_moe_dsa': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, '
                           'where Packer cannot keep the packed examples apart',
                 'status': 'refused'},
 'got_ocr2': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'gpt-sw3': {'reason': '', 'status': 'verified'},
 'gpt2': {'reason': '', 'status': 'verified'},
 'gpt_bigcode': {'reason': '', 'status': 'verified'},
 'gpt_neo': {'reason': 'not verified: no tiny config could be made here: '
                       'StrictDataclassClassValidationError: Class validation error for validator '
                       "'validate_architecture':",
             'status': 'refused'},
 'gpt_neox': {'reason': '', 'status': 'verified'},
 'gpt_neox_japanese': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                                 'examples apart',
                       'status': 'refused'},
 'gpt_oss': {'reason': '', 'status': 'verified'},
 'gptj': {'reason': '', 'status': 'verified'},
 'granite': {'reason': '', 'status': 'verified'},
 'granite_swa': {'reason': '', 'status': 'verified'},
 'granitemoe': {'reason': '', 'status': 'verified'},
 'granitemoe_swa': {'reason': '', 'status': 'verified'},
 'granitemoehybrid': {'reason': 'its layers of type linear_attention mix tokens outside the attention '
                                'function, where Packer cannot keep the packed examples apart',
                      'status': 'refused'},
 'granitemoeshared': {'reason': '', 'status': 'verified'},
 'helium': {'reason': '', 'status': 'verified'},
 'hrm_text': {'reason': 'packed differs from unpacked (logits 2.4e-03, loss 3.0e-05, gradients 5.1e-03 '
                        '(model.L_module.layers.1.self_attn.k_proj.weight)): something outside attention '
                        'mixes tokens across examples or ignores position_ids',
              'status': 'refused'},
 'hunyuan_v1_dense': {'reason': '', 'status': 'verified'},
 'hunyuan_v1_moe': {'reason': '', 'status': 'verified'},
 'hy_v3': {'reason': '', 'status': 'verified'},
 'hy_v4': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, where '
                     'Packer cannot keep the packed examples apart',
           'status': 'refused'},
 'hyperclovax': {'reason': '', 'status': 'verified'},
 'inkling2_loop_text': {'reason': 'its layers of type hybrid, hybrid_sliding mix tokens outside the '
                                  'attention function, where Packer cannot keep the packed examples apart',
                        'status': 'refused'},
 'inkling2_text': {'reason': 'its layers of type hybrid, hybrid_sliding mix tokens outside the attention '
                             'function, where Packer cannot keep the packed examples apart',
                   'status': 'refused'},
 'inkling_text': {'reason': 'its layers of type hybrid, hybrid_sliding mix tokens outside the attention '
                            'function, where Packer cannot keep the packed examples apart',
                  'status': 'refused'},
 'internlm3': {'reason': '', 'status': 'verified'},
 'iquestcoder': {'reason': '', 'status': 'verified'},
 'jais2': {'reason': '', 'status': 'verified'},
 'jamba': {'reason': 'not verified: no tiny config could be made here: AttributeError: property '
                     "'layer_types' of 'JambaConfig' object has no setter",
           'status': 'refused'},
 'jetmoe': {'reason': '', 'status': 'verified'},
 'kimi_linear': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, '
                           'where Packer cannot keep the packed examples apart',
                 'status': 'refused'},
 'kolibri1': {'reason': '', 'status': 'verified'},
 'laguna': {'reason': '', 'status': 'verified'},
 'lara_mini': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, '
                         'where Packer cannot keep the packed examples apart',
               'status': 'refused'},
 'lfm2': {'reason': '', 'status': 'verified'},
 'lfm2_moe': {'reason': 'not verified: a tiny Lfm2MoeForCausalLM does not run here even with eager '
                        "attention: TypeError: 'NoneType' object is not subscriptable",
              'status': 'refused'},
 'lfm3': {'reason': 'its layers of type conv mix tokens outside the attention function, where Packer cannot '
                    'keep the packed examples apart',
          'status': 'refused'},
 'llama': {'reason': '', 'status': 'verified'},
 'llama4': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'llama4_text': {'reason': 'its layers of type chunked_attention mix tokens outside the attention function, '
                           'where Packer cannot keep the packed examples apart',
                 'status': 'refused'},
 'longcat_flash': {'reason': '', 'status': 'verified'},
 'mamba': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, where '
                     'Packer cannot keep the packed examples apart',
           'status': 'refused'},
 'mamba2': {'reason': 'not verified: no tiny config could be made here: StrictDataclassClassValidationError: '
                      "Class validation error for validator 'validate_architecture':",
            'status': 'refused'},
 'marian': {'reason': 'packed differs from unpacked (logits 1.3e+00, loss 4.6e-03, gradients 2.1e+00 '
                      '(model.decoder.layers.1.self_attn.v_proj.weight)): something outside attention mixes '
                      'tokens across examples or ignores position_ids',
            'status': 'refused'},
 'mbart': {'reason': 'packed differs from unpacked (logits 5.8e-01, loss 4.3e-04, gradients 7.9e-01 '
                     '(model.decoder.embed_positions.weight)): something outside attention mixes tokens '
                     'across examples or ignores position_ids',
           'status': 'refused'},
 'megatron-bert': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                             'examples apart',
                   'status': 'refused'},
 'mellum': {'reason': '', 'status': 'verified'},
 'mimo_v2_flash': {'reason': '', 'status': 'verified'},
 'minicpm3': {'reason': '', 'status': 'verified'},
 'minimax': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, where '
                       'Packer cannot keep the packed examples apart',
             'status': 'refused'},
 'minimax_m2': {'reason': '', 'status': 'verified'},
 'minimax_m3_vl_text': {'reason': '', 'status': 'verified'},
 'ministral': {'reason': '', 'status': 'verified'},
 'ministral3': {'reason': '', 'status': 'verified'},
 'mistral': {'reason': '', 'status': 'verified'},
 'mixtral': {'reason': '', 'status': 'verified'},
 'mllama': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'modernbert-decoder': {'reason': '', 'status': 'verified'},
 'moshi': {'reason': 'the packed run fails: IndexError: Target 128 is out of bounds.', 'status': 'refused'},
 'moss_transcribe_diarize': {'reason': 'not verified: its smallest config here still needs over 4 GB',
                             'status': 'refused'},
 'mpt': {'reason': "the packed run fails: AttributeError: 'NoneType' object has no attribute 'to'",
         'status': 'refused'},
 'musicgen': {'reason': 'not verified: a tiny MusicgenForCausalLM does not run here even with eager '
                        "attention: AttributeError: 'MusicgenConfig' object has no attribute 'dropout'",
              'status': 'refused'},
 'musicgen_melody': {'reason': 'not verified: a tiny MusicgenMelodyForCausalLM does not run here even with '
                               "eager attention: AttributeError: 'MusicgenMelodyConfig' object has no "
                               "attribute 'dropout'",
                     'status': 'refused'},
 'mvp': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples apart',
         'status': 'refused'},
 'nanochat': {'reason': '', 'status': 'verified'},
 'nemotron': {'reason': '', 'status': 'verified'},
 'nemotron_h': {'reason': 'its layers of type linear_attention, mlp, moe mix tokens outside the attention '
                          'function, where Packer cannot keep the packed examples apart',
                'status': 'refused'},
 'olmo': {'reason': '', 'status': 'verified'},
 'olmo2': {'reason': '', 'status': 'verified'},
 'olmo3': {'reason': '', 'status': 'verified'},
 'olmo_hybrid': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, '
                           'where Packer cannot keep the packed examples apart',
                 'status': 'refused'},
 'olmoe': {'reason': '', 'status': 'verified'},
 'openai-gpt': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                          'examples apart',
                'status': 'refused'},
 'opt': {'reason': '', 'status': 'verified'},
 'pegasus': {'reason': 'packed differs from unpacked (logits 1.3e+00, loss 5.3e-03, gradients 2.0e+00 '
                       '(model.decoder.layers.10.final_layer_norm.weight)): something outside attention '
                       'mixes tokens across examples or ignores position_ids',
             'status': 'refused'},
 'persimmon': {'reason': '', 'status': 'verified'},
 'phi': {'reason': '', 'status': 'verified'},
 'phi3': {'reason': '', 'status': 'verified'},
 'phi4_multimodal': {'reason': 'not verified: its smallest config here still needs over 4 GB',
                     'status': 'refused'},
 'phimoe': {'reason': 'packed differs from unpacked (logits 7.0e-01, loss 7.6e-03, gradients 1.9e+00 '
                      '(model.layers.0.mlp.router.weight)): something outside attention mixes tokens across '
                      'examples or ignores position_ids',
            'status': 'refused'},
 'plbart': {'reason': 'not verified: a tiny PLBartForCausalLM does not run here even with eager attention: '
                      'ValueError: embed_dim must be divisible by num_heads (got `embed_dim`: 64 and '
                      '`num_heads`: 12).',
            'status': 'refused'},
 'prophetnet': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                          'examples apart',
                'status': 'refused'},
 'qwen2': {'reason': '', 'status': 'verified'},
 'qwen2_moe': {'reason': '', 'status': 'verified'},
 'qwen3': {'reason': '', 'status': 'verified'},
 'qwen3_5': {'reason': 'not verified: its smallest config here still needs over 4 GB', 'status': 'refused'},
 'qwen3_5_moe': {'reason': 'not verified: its smallest config here still needs over 4 GB',
                 'status': 'refused'},
 'qwen3_5_moe_text': {'reason': 'its layers of type linear_attention mix tokens outside the attention '
                                'function, where Packer cannot keep the packed examples apart',
                      'status': 'refused'},
 'qwen3_5_text': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, '
                            'where Packer cannot keep the packed examples apart',
                  'status': 'refused'},
 'qwen3_moe': {'reason': '', 'status': 'verified'},
 'qwen3_next': {'reason': 'its layers of type linear_attention mix tokens outside the attention function, '
                          'where Packer cannot keep the packed examples apart',
                'status': 'refused'},
 'qwen4_exp': {'reason': 'not verified: a tiny Qwen4ExpForCausalLM does not run here even with eager '
                         "attention: TypeError: unsupported operand type(s) for //: 'NoneType' and "
                         "'NoneType'",
               'status': 'refused'},
 'qwen4_exp_text': {'reason': 'its layers of type indexed_attention, linear_attention mix tokens outside the '
                              'attention function, where Packer cannot keep the packed examples apart',
                    'status': 'refused'},
 'recurrent_gemma': {'reason': 'not verified: no tiny config could be made here: AttributeError: property '
                               "'layers_block_type' of 'RecurrentGemmaConfig' object has no setter",
                     'status': 'refused'},
 'reformer': {'reason': 'not verified: a tiny ReformerModelWithLMHead does not run here even with eager '
                        'attention: AssertionError: If you want to use `ReformerModelWithLMHead` make sure '
                        'that `is_decoder=True`.',
              'status': 'refused'},
 'rembert': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                       'apart',
             'status': 'refused'},
 'roberta': {'reason': '', 'status': 'verified'},
 'roberta-prelayernorm': {'reason': '', 'status': 'verified'},
 'roc_bert': {'reason': '', 'status': 'verified'},
 'roformer': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                        'apart',
              'status': 'refused'},
 'rwkv': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                    'apart',
          'status': 'refused'},
 'sarvam_mla': {'reason': '', 'status': 'verified'},
 'sarvam_moe': {'reason': '', 'status': 'verified'},
 'seed_oss': {'reason': '', 'status': 'verified'},
 'smollm3': {'reason': '', 'status': 'verified'},
 'solar_open': {'reason': '', 'status': 'verified'},
 'stablelm': {'reason': '', 'status': 'verified'},
 'starcoder2': {'reason': '', 'status': 'verified'},
 'trocr': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                     'apart',
           'status': 'refused'},
 'vaultgemma': {'reason': '', 'status': 'verified'},
 'whisper': {'reason': 'not verified: a tiny WhisperForCausalLM does not run here even with eager attention: '
                       'ValueError: embed_dim must be divisible by num_heads (got `embed_dim`: 64 and '
                       '`num_heads`: 6).',
             'status': 'refused'},
 'xglm': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                    'apart',
          'status': 'refused'},
 'xlm': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples apart',
         'status': 'refused'},
 'xlm-roberta': {'reason': '', 'status': 'verified'},
 'xlm-roberta-xl': {'reason': '', 'status': 'verified'},
 'xlnet': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                     'apart',
           'status': 'refused'},
 'xlstm': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                     'apart',
           'status': 'refused'},
 'xmod': {'reason': 'not verified: a tiny XmodForCausalLM does not run here even with eager attention: '
                    'ValueError: Input language unknown. Please call '
                    '`XmodPreTrainedModel.set_default_language()`',
          'status': 'refused'},
 'youtu': {'reason': '', 'status': 'verified'},
 'zamba': {'reason': 'not verified: no tiny config could be made here: StrictDataclassClassValidationError: '
                     "Class validation error for validator 'validate_layer_type':",
           'status': 'refused'},
 'zamba2': {'reason': 'not verified: no tiny config could be made here: StrictDataclassClassValidationError: '
                      "Class validation error for validator 'validate_layer_type':",
            'status': 'refused'},
 'zaya': {'reason': 'not verified: no tiny config could be made here: StrictDataclassClassValidationError: '
                    "Class validation error for validator 'validate_architecture':",
          'status': 'refused'}}
