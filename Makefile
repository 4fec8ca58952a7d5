# The two commands:  make demo  (set up + run the pipeline on the embedded model)
#                    make test  (set up + run the tests)
PY      := .venv/bin/python
STAMP   := .venv/.installed
EXTRAS  := .venv/.installed-extras
RUN     := runs/demo
# what the sample shop's bot answers when its FAQ does not cover a question
DECLINE := 죄송합니다. 문의하신 내용은 FAQ에 없어 정확히 안내드리기 어려워요. 고객센터(02-0000-0000)나 카카오톡 채널로 문의해 주세요.

.PHONY: demo test gguf browser-deps clean

$(STAMP): pyproject.toml constraints/cpu.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	# the CPU build of torch first, so nothing pulls the CUDA wheels
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -c constraints/cpu.txt -e '.[test]'
	touch $@

# prepare, then the chat page at once: it answers from the sample FAQ (each answer the FAQ
# entry's own, labelled) as soon as training has indexed the FAQ (under a minute), while
# train (grounded in the FAQ) -> merge run beside it on the embedded gemma-3-270m; the trained
# model takes over on the page when merged, without a restart. The evaluation (with the
# shipped question set) follows and fills in on the page when done: runs/demo-eval.log,
# runs/demo/eval/. Ctrl-C ends the page and whatever still runs beside it.
demo: $(STAMP)
	$(PY) -m builder prepare data/sample_faq.csv --out runs/data
	( $(PY) -m builder train runs/data --out $(RUN) --config configs/embedded-cpu.yaml \
		--set 'rag.decline_message=$(DECLINE)' && \
	  $(PY) -m builder merge $(RUN) && \
	  $(PY) -m builder eval $(RUN) --train-sample 10 --max-new-tokens 96 \
		--questions data/sample_questions.csv > runs/demo-eval.log 2>&1 ) & \
	$(PY) -m builder app --run $(RUN)

# The optional extras the tests cover too: `builder export` / `--use gguf` (llama.cpp, built
# once per machine, about 5 minutes on 2 idle cores; pip caches the wheel for every later venv)
# and `builder merge-models` (mergekit, with the CPU constraint so torch stays the CPU build)
$(EXTRAS): $(STAMP)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" .venv/bin/pip install -q -c constraints/cpu.txt -e '.[test,gguf,merge]'
	touch $@

gguf: $(EXTRAS)

# Debian's chromium drives the browser test (never a downloaded browser)
browser-deps:
	@(test -x /usr/bin/chromium && fc-list 2>/dev/null | grep -qi nanum) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium chromium-driver fonts-nanum >/dev/null)

# Two workers, each module in one of them (tests/conftest.py): much of a test's time is a server
# starting, a tokenizer loading or a subprocess importing torch, not both cores computing. The
# embedded model is converted first, so the workers never convert it at the same time.
test: $(EXTRAS) browser-deps
	$(PY) -c "from builder.embedded import ensure_embedded_model; ensure_embedded_model()"
	$(PY) -m pytest -n 2 --dist loadscope --durations=25

clean:
	rm -rf runs .venv
