# The README's C++ example must be examples/quickstart.cpp word for word, so
# the example a newcomer copies is one that compiles (it is built as an
# example). Run by ctest (readme_example_matches).
file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)
string(FIND "${readme}" "${example}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/quickstart.cpp verbatim; "
                      "paste the file into the README's cpp block")
endif()
