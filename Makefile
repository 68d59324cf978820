# Two entry points (README quick start):
#   make demo   set up a virtual environment and run `nvfp4tools demo` on a generated tiny checkpoint
#   make test   set up the test environment (interop oracles included) and run the test suite
#
# torch is pinned to the CPU build that this machine family keeps on local disk (seconds to
# install); an unpinned torch would pull a multi-GB CUDA build. The pin lives here, not in the
# package metadata.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test setup setup-test bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.test: $(VENV)/.core $(VENV)/.llama-cpp
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[test,oracles]" "$(TORCH_PIN)"
	$(MAKE) $(LLAMA_CPP)/convert_hf_to_gguf.py
	touch $@

# llama.cpp's own converter (convert_hf_to_gguf.py + conversion/ + gguf-py), from the
# llama-cpp-python source distribution on PyPI: the oracle for GGUF files.
LLAMA_CPP_PY ?= llama-cpp-python==0.3.36
LLAMA_CPP := .cache/llama.cpp
$(LLAMA_CPP)/convert_hf_to_gguf.py:
	mkdir -p .cache/sdist $(LLAMA_CPP)
	$(PIP) download --no-binary :all: --no-deps "$(LLAMA_CPP_PY)" -d .cache/sdist
	tar xzf .cache/sdist/llama_cpp_python-*.tar.gz -C .cache/sdist --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
	cp -r .cache/sdist/llama_cpp_python-*/vendor/llama.cpp/. $(LLAMA_CPP)/
	rm -rf .cache/sdist

# llama.cpp itself, to run GGUF files in the tests (tests/oracles/families.py: llama_logits):
# llama-cpp-python compiled from its sdist, CPU only, about 4 minutes on 2 cores. The flags keep
# the build to the libraries the Python package loads (no mtmd/llava, tools, tests, examples) and
# portable (no -march=native: AVX2/FMA/F16C, as ggml's defaults without GGML_NATIVE). Plus
# sentencepiece, which llama.cpp's converter imports for the Llama-family vocabularies.
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF
$(VENV)/.llama-cpp: $(VENV)/.core
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) install "$(LLAMA_CPP_PY)" "sentencepiece>=0.1.98,<0.3.0"
	touch $@

setup: $(VENV)/.core
setup-test: $(VENV)/.test

demo: $(VENV)/.core
	$(VENV)/bin/nvfp4tools demo

test: $(VENV)/.test
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(VENV)/.core
	$(PY) bench/inspect_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .cache
