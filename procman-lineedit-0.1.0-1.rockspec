-- procman-lineedit: line editing, history and Tab completion for procman's
-- REPL, through libedit (BSD licensed). Its own rock, so that the procman
-- rock builds without libedit's headers; without this one the REPL reads
-- plain lines (and says so once). From a checkout, after procman:
--   luarocks --lua-version=5.4 make procman-lineedit-0.1.0-1.rockspec
rockspec_format = "3.0"
package = "procman-lineedit"
version = "0.1.0-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Line editing for procman's REPL (libedit)",
  detailed = [[
The procman.lineedit module: libedit's line editor with history kept in
~/.procman_history and Tab completion of globals, table fields and methods,
for the REPL of the procman command.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "procman",
}
external_dependencies = {
  EDIT = { header = "histedit.h", library = "edit" },  -- Debian: libedit-dev
}
build = {
  type = "builtin",
  modules = {
    ["procman.lineedit"] = {
      sources = { "csrc/lineedit.c" },
      libraries = { "edit" },
      incdirs = { "$(EDIT_INCDIR)" },
      libdirs = { "$(EDIT_LIBDIR)" },
    },
  },
}
