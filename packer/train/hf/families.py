"""Which transformers model families train packed exactly as unpacked: written by `make models`
(benchmarks/model_matrix.py) from a run over every causal-LM architecture; do not edit by hand.

FAMILIES maps a config's model_type to {"status": "verified" | "refused", "reason": str}.
"""

TRANSFORMERS_VERSION = '5.25.0'
FAMILIES: dict[str, dict[str, str]] = {'afmoe': {'reason': '', 'status': 'verified'},
 'apertus': {'reason': '', 'status': 'verified'},
 'apertus1p5_text': {'reason': '', 'status': 'verified'},
 'arcee': {'reason': '', 'status': 'verified'},
 'aria_text': {'reason': '', 'status': 'verified'},
 'axk1': {'reason': '', 'status': 'verified'},
 'axk2': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, where '
                    'Packer cannot keep the packed examples apart',
          'status': 'refused'},
 'bailing_hybrid': {'reason': '', 'status': 'verified'},
 'bamba': {'reason': '', 'status': 'verified'},
 'bart': {'reason': 'packed differs from unpacked (logits 5.8e-01, loss 4.0e-03, gradients 9.4e-01 '
                    '(model.decoder.embed_positions.weight)): something outside attention mixes tokens '
                    'across examples or ignores position_ids',
          'status': 'refused'},
 'beam': {'reason': '', 'status': 'verified'},
 'bert': {'reason': '', 'status': 'verified'},
 'bert-generation': {'reason': '', 'status': 'verified'},
 'big_bird': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                        'apart',
              'status': 'refused'},
 'bigbird_pegasus': {'reason': 'packed differs from unpacked (logits 2.4e-01, loss 4.5e-04, gradients '
                               '1.0e+00 (model.decoder.layers.0.self_attn.out_proj.weight)): something '
                               'outside attention mixes tokens across examples or ignores position_ids',
                     'status': 'refused'},
 'biogpt': {'reason': '', 'status': 'verified'},
 'bitnet': {'reason': '', 'status': 'verified'},
 'blenderbot': {'reason': 'packed differs from unpacked (logits 7.2e-01, loss 1.1e-03, gradients 1.2e+00 '
                          '(model.decoder.layers.0.fc2.weight)): something outside attention mixes tokens '
                          'across examples or ignores position_ids',
                'status': 'refused'},
 'blenderbot-small': {'reason': 'packed differs from unpacked (logits 1.2e-02, loss 2.2e-04, gradients '
                                '4.4e-01 (model.decoder.embed_tokens.weight)): something outside attention '
                                'mixes tokens across examples or ignores position_ids',
                      'status': 'refused'},
 'bloom': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                     'apart',
           'status': 'refused'},
 'blt': {'reason': 'packer attention cannot run BltCrossAttention with a 4D attention mask; pass packed '
                   'batches as position_ids or cu_seq_lens_q, without an attention mask',
         'status': 'refused'},
 'camembert': {'reason': '', 'status': 'verified'},
 'clip_vision_model': {'reason': '', 'status': 'verified'},
 'codegen': {'reason': '', 'status': 'verified'},
 'cohere': {'reason': '', 'status': 'verified'},
 'cohere2': {'reason': '', 'status': 'verified'},
 'cohere2_moe': {'reason': '', 'status': 'verified'},
 'cohere_compass_text': {'reason': '', 'status': 'verified'},
 'cpmant': {'reason': 'not verified: a tiny CpmAntForCausalLM does not run here even with eager attention: '
                      'IndexError: Target 870 is out of bounds.',
            'status': 'refused'},
 'ctrl': {'reason': '', 'status': 'verified'},
 'cwm': {'reason': '', 'status': 'verified'},
 'data2vec-text': {'reason': '', 'status': 'verified'},
 'dbrx': {'reason': '', 'status': 'verified'},
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
 'dots3_note': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, '
                          'where Packer cannot keep the packed examples apart',
                'status': 'refused'},
 'dots3_note_text': {'reason': 'its layers of type indexed_attention mix tokens outside the attention '
                               'function, where Packer cannot keep the packed examples apart',
                     'status': 'refused'},
 'electra': {'reason': '', 'status': 'verified'},
 'emu3': {'reason': '', 'status': 'verified'},
 'emu3_text_model': {'reason': '', 'status': 'verified'},
 'ergo': {'reason': '', 'status': 'verified'},
 'ernie': {'reason': '', 'status': 'verified'},
 'ernie4_5': {'reason': '', 'status': 'verified'},
 'ernie4_5_moe': {'reason': '', 'status': 'verified'},
 'exaone': {'reason': '', 'status': 'verified'},
 'exaone4': {'reason': '', 'status': 'verified'},
 'exaone_moe': {'reason': '', 'status': 'verified'},
 'falcon': {'reason': '', 'status': 'verified'},
 'falcon_h1': {'reason': '', 'status': 'verified'},
 'falcon_mamba': {'reason': '', 'status': 'verified'},
 'flex_olmo': {'reason': '', 'status': 'verified'},
 'flint': {'reason': '', 'status': 'verified'},
 'fuyu': {'reason': '', 'status': 'verified'},
 'gemma': {'reason': '', 'status': 'verified'},
 'gemma2': {'reason': '', 'status': 'verified'},
 'gemma3': {'reason': '', 'status': 'verified'},
 'gemma3_text': {'reason': '', 'status': 'verified'},
 'gemma3n': {'reason': 'not verified: a tiny Gemma3nForConditionalGeneration does not run here even with '
                       'eager attention: ImportError: ',
             'status': 'refused'},
 'gemma3n_text': {'reason': '', 'status': 'verified'},
 'gemma4': {'reason': '', 'status': 'verified'},
 'gemma4_assistant': {'reason': 'not verified: no tiny config could be made here: '
                                'StrictDataclassClassValidationError: Class validation error for validator '
                                "'validate_architecture':",
                      'status': 'refused'},
 'gemma4_text': {'reason': '', 'status': 'verified'},
 'gemma4_unified': {'reason': '', 'status': 'verified'},
 'gemma4_unified_assistant': {'reason': 'not verified: a tiny Gemma4UnifiedAssistantForCausalLM does not run '
                                        'here even with eager attention: ValueError: The set of layer types '
                                        'producing a cache is different than the set of layer types using '
                                        'them',
                              'status': 'refused'},
 'gemma4_unified_text': {'reason': '', 'status': 'verified'},
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
 'got_ocr2': {'reason': '', 'status': 'verified'},
 'got_ocr2_vision': {'reason': '', 'status': 'verified'},
 'gpt-sw3': {'reason': '', 'status': 'verified'},
 'gpt2': {'reason': '', 'status': 'verified'},
 'gpt_bigcode': {'reason': '', 'status': 'verified'},
 'gpt_neo': {'reason': 'transformers does not run GPTNeoForCausalLM through its attention interface '
                       "(KeyError: 'packer')",
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
 'granitemoehybrid': {'reason': '', 'status': 'verified'},
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
 'inkling2_loop_text': {'reason': 'packer attention cannot run Inkling2LoopSlidingAttention with the '
                                  'argument(s) position_bias, sinks; Packer does not implement them; use '
                                  'another attn_implementation for this model',
                        'status': 'refused'},
 'inkling2_text': {'reason': 'packer attention cannot run Inkling2SlidingAttention with the argument(s) '
                             'position_bias, sinks; Packer does not implement them; use another '
                             'attn_implementation for this model',
                   'status': 'refused'},
 'inkling_text': {'reason': 'packer attention cannot run InklingAttention with the argument(s) '
                            'position_bias; Packer does not implement them; use another attn_implementation '
                            'for this model',
                  'status': 'refused'},
 'internlm3': {'reason': '', 'status': 'verified'},
 'iquestcoder': {'reason': '', 'status': 'verified'},
 'jais2': {'reason': '', 'status': 'verified'},
 'jamba': {'reason': '', 'status': 'verified'},
 'jetmoe': {'reason': '', 'status': 'verified'},
 'kimi_linear': {'reason': '', 'status': 'verified'},
 'kolibri1': {'reason': '', 'status': 'verified'},
 'kolibri1_1': {'reason': 'not verified: no tiny config could be made here: '
                          'StrictDataclassClassValidationError: Class validation error for validator '
                          "'validate_architecture':",
                'status': 'refused'},
 'laguna': {'reason': '', 'status': 'verified'},
 'lara_mini': {'reason': '', 'status': 'verified'},
 'lfm2': {'reason': '', 'status': 'verified'},
 'lfm2_moe': {'reason': '', 'status': 'verified'},
 'lfm3': {'reason': '', 'status': 'verified'},
 'llama': {'reason': '', 'status': 'verified'},
 'llama4': {'reason': '', 'status': 'verified'},
 'llama4_text': {'reason': '', 'status': 'verified'},
 'llava': {'reason': '', 'status': 'verified'},
 'longcat_flash': {'reason': '', 'status': 'verified'},
 'mamba': {'reason': '', 'status': 'verified'},
 'mamba2': {'reason': '', 'status': 'verified'},
 'marian': {'reason': 'packed differs from unpacked (logits 1.5e+00, loss 1.2e-03, gradients 2.1e+00 '
                      '(model.decoder.layers.1.self_attn.v_proj.weight)): something outside attention mixes '
                      'tokens across examples or ignores position_ids',
            'status': 'refused'},
 'mbart': {'reason': 'packed differs from unpacked (logits 5.8e-01, loss 4.0e-03, gradients 9.4e-01 '
                     '(model.decoder.embed_positions.weight)): something outside attention mixes tokens '
                     'across examples or ignores position_ids',
           'status': 'refused'},
 'megatron-bert': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                             'examples apart',
                   'status': 'refused'},
 'mellum': {'reason': '', 'status': 'verified'},
 'mimo_v2_flash': {'reason': '', 'status': 'verified'},
 'minicpm3': {'reason': '', 'status': 'verified'},
 'minicpm5_moe': {'reason': '', 'status': 'verified'},
 'minimax': {'reason': '', 'status': 'verified'},
 'minimax_m2': {'reason': '', 'status': 'verified'},
 'minimax_m3_vl_text': {'reason': '', 'status': 'verified'},
 'ministral': {'reason': '', 'status': 'verified'},
 'ministral3': {'reason': '', 'status': 'verified'},
 'mistral': {'reason': '', 'status': 'verified'},
 'mixtral': {'reason': '', 'status': 'verified'},
 'mllama': {'reason': '', 'status': 'verified'},
 'mllama_text_model': {'reason': '', 'status': 'verified'},
 'modernbert-decoder': {'reason': '', 'status': 'verified'},
 'moshi': {'reason': '', 'status': 'verified'},
 'moss_transcribe_diarize': {'reason': '', 'status': 'verified'},
 'moss_transcribe_diarize_audio': {'reason': '', 'status': 'verified'},
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
 'nemotron_h': {'reason': '', 'status': 'verified'},
 'olmo': {'reason': '', 'status': 'verified'},
 'olmo2': {'reason': '', 'status': 'verified'},
 'olmo3': {'reason': '', 'status': 'verified'},
 'olmo_hybrid': {'reason': '', 'status': 'verified'},
 'olmoe': {'reason': '', 'status': 'verified'},
 'openai-gpt': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                          'examples apart',
                'status': 'refused'},
 'opt': {'reason': '', 'status': 'verified'},
 'param2moe': {'reason': '', 'status': 'verified'},
 'pegasus': {'reason': 'packed differs from unpacked (logits 1.5e+00, loss 1.3e-03, gradients 1.9e+00 '
                       '(model.decoder.layers.0.self_attn.v_proj.weight)): something outside attention mixes '
                       'tokens across examples or ignores position_ids',
             'status': 'refused'},
 'persimmon': {'reason': '', 'status': 'verified'},
 'phi': {'reason': '', 'status': 'verified'},
 'phi3': {'reason': '', 'status': 'verified'},
 'phi4_multimodal': {'reason': '', 'status': 'verified'},
 'phi4_multimodal_audio': {'reason': '', 'status': 'verified'},
 'phi4_multimodal_vision': {'reason': '', 'status': 'verified'},
 'phimoe': {'reason': '', 'status': 'verified'},
 'plbart': {'reason': 'packed differs from unpacked (logits 8.7e-01, loss 1.9e-02, gradients 2.4e+00 '
                      '(model.decoder.layers.1.self_attn.q_proj.bias)): something outside attention mixes '
                      'tokens across examples or ignores position_ids',
            'status': 'refused'},
 'prophetnet': {'reason': 'its attention never reaches the attention function, so Packer cannot keep '
                          'examples apart',
                'status': 'refused'},
 'qwen2': {'reason': '', 'status': 'verified'},
 'qwen2_5_vl': {'reason': '', 'status': 'verified'},
 'qwen2_5_vl_text': {'reason': '', 'status': 'verified'},
 'qwen2_5_vl_vision': {'reason': '', 'status': 'verified'},
 'qwen2_moe': {'reason': '', 'status': 'verified'},
 'qwen2_vl': {'reason': '', 'status': 'verified'},
 'qwen2_vl_text': {'reason': '', 'status': 'verified'},
 'qwen2_vl_vision': {'reason': '', 'status': 'verified'},
 'qwen3': {'reason': '', 'status': 'verified'},
 'qwen3_5': {'reason': '', 'status': 'verified'},
 'qwen3_5_moe': {'reason': '', 'status': 'verified'},
 'qwen3_5_moe_text': {'reason': '', 'status': 'verified'},
 'qwen3_5_text': {'reason': '', 'status': 'verified'},
 'qwen3_moe': {'reason': '', 'status': 'verified'},
 'qwen3_next': {'reason': '', 'status': 'verified'},
 'qwen3_vl': {'reason': '', 'status': 'verified'},
 'qwen3_vl_text': {'reason': '', 'status': 'verified'},
 'qwen3_vl_vision': {'reason': '', 'status': 'verified'},
 'qwen4_exp': {'reason': 'its layers of type indexed_attention mix tokens outside the attention function, '
                         'where Packer cannot keep the packed examples apart',
               'status': 'refused'},
 'qwen4_exp_text': {'reason': 'its layers of type indexed_attention mix tokens outside the attention '
                              'function, where Packer cannot keep the packed examples apart',
                    'status': 'refused'},
 'recurrent_gemma': {'reason': '', 'status': 'verified'},
 'reformer': {'reason': 'not verified: a tiny ReformerModelWithLMHead does not run here even with eager '
                        'attention: ValueError: If training, make sure that config.axial_pos_shape factors: '
                        '(16, 16) multiply to sequence length. Got prod((16, 16)) != sequence_length: 12. '
                        'You ...',
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
 'rwkv': {'reason': '', 'status': 'verified'},
 'sarvam_mla': {'reason': '', 'status': 'verified'},
 'sarvam_moe': {'reason': '', 'status': 'verified'},
 'seed_oss': {'reason': '', 'status': 'verified'},
 'siglip_vision_model': {'reason': '', 'status': 'verified'},
 'smollm3': {'reason': '', 'status': 'verified'},
 'solar_open': {'reason': '', 'status': 'verified'},
 'stablelm': {'reason': '', 'status': 'verified'},
 'starcoder2': {'reason': '', 'status': 'verified'},
 'trocr': {'reason': 'its attention never reaches the attention function, so Packer cannot keep examples '
                     'apart',
           'status': 'refused'},
 'vaultgemma': {'reason': '', 'status': 'verified'},
 'whisper': {'reason': 'packed differs from unpacked (logits 1.7e-07, loss 1.9e-03, gradients 5.1e-01 '
                       '(model.decoder.embed_tokens.weight)): something outside attention mixes tokens '
                       'across examples or ignores position_ids',
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
 'xlstm': {'reason': '', 'status': 'verified'},
 'xmod': {'reason': 'not verified: a tiny XmodForCausalLM does not run here even with eager attention: '
                    'ValueError: Input language unknown. Please call '
                    '`XmodPreTrainedModel.set_default_language()`',
          'status': 'refused'},
 'youtu': {'reason': '', 'status': 'verified'},
 'zamba': {'reason': "verified within twice transformers' own reference's movement by batch shape alone "
                     '(logits 4.1e-05, gradients 1.4e-04)',
           'status': 'verified'},
 'zamba2': {'reason': '', 'status': 'verified'},
 'zaya': {'reason': 'packed differs from unpacked (logits 1.2e-05, loss 1.3e-07, gradients 1.2e-04 '
                    '(model.layers.1.mlp.gate.router_mlp.norm.weight); the reference itself moves by logits '
                    '4.9e-07, gradients 6.8e-06): something outside attention mixes tokens across examples '
                    'or ignores position_ids',
          'status': 'refused'}}
