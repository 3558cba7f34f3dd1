"""Running a workshop: student copies of the notebooks, one vLLM server for the room, a class-sized load test.

student.py    student copies: solution cells -> exercise stubs, outputs stripped
classroom.py  the class server: KV cache sized for the room, API key, env vars, live status line
classload.py  many learners running the batching lesson at once against one server
cli.py        `tinyformer workshop student-notebooks OUT` and `tinyformer workshop serve MODEL_DIR`
"""
