"""Development and verification tools, apart from what a deployed worker runs: the development
broker (:mod:`.devkafka`), the demo, replay of the bundled data sets, a whole-topic
:mod:`.reader`, a worker child process (:mod:`.workerproc`), the benchmark (:mod:`.bench`), fault
trials (:mod:`.faults`), the hostile-input fuzzer (:mod:`.fuzz`) and model training
(:mod:`.training`).

Tools may import anything in the package; nothing outside ``tools`` and ``cli`` imports them."""
