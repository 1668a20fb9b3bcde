# cmake -DEXE=stackemu-full -DSHELL_NAME=bash -DOUT=file -P WriteCompletion.cmake: writes the
# program's completion script for one shell; a failure fails the build rather than installing
# an empty script.
execute_process(COMMAND ${EXE} completion ${SHELL_NAME}
  OUTPUT_FILE ${OUT}.tmp RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  file(REMOVE ${OUT}.tmp)
  message(FATAL_ERROR "${EXE} completion ${SHELL_NAME} failed (${rc}): ${err}")
endif()
file(RENAME ${OUT}.tmp ${OUT})
