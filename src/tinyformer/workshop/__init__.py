"""Running a workshop: student copies of the notebooks, nbgrader, one vLLM server for the room, a load test.

student.py          student copies: nbgrader's release steps (solutions -> exercise stubs, outputs stripped)
nbgrader_meta.py    nbgrader's cell metadata on the instructor notebooks, from the `solution` tags
nbgrader_course.py  an nbgrader course folder of the lessons, and running `nbgrader` on it
classroom.py        the class server: KV cache sized for the room, API key, env vars, live status line
classload.py        many learners running the batching lesson at once against one server
hub.py              a one-machine JupyterHub for the class: the vLLM server as its service, learners' env vars
cli.py              `tinyformer workshop student-notebooks | nbgrader-metadata | nbgrader-course | serve`
"""
