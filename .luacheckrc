std = "lua54"
max_line_length = 110
-- Specs quote whole error messages: let their lines run longer.
files["spec"] = { std = "+busted", max_line_length = 140 }
files["examples"] = { max_line_length = 120 }
-- Workflow files run in the sandbox, whose global 'procman' holds
-- workflow, after, at and cancel.
files["spec/fixtures"] = { std = "lua54", read_globals = { "procman" } }
-- A spec of its own, run by spec/testing_spec.lua in a child busted.
files["spec/fixtures/failing_expectations.lua"] = { std = "lua54+busted" }
