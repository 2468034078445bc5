"""Models: the decoder-only transformer (`transformer`, configured by `config`), its weights from
Hugging Face folders (`hf_checkpoint`, over `safetensors_io`) and GGUF files (`gguf_checkpoint`), and
`loading.load_model`, which puts them on a mesh born sharded. Models know no algorithm; they import
only `infra`."""
