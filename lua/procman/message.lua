--- procman.message: the text of an error value, whatever was raised.
--
-- Handlers may raise error objects (tables, userdata). Where procman must
-- turn one into text (a parked flow's error, a dead letter, a test's
-- outcome), it asks the value's __tostring, guarded: an object whose
-- __tostring fails, or returns something else than a string, must not
-- replace the report of the handler's failure with an error of its own.

return function(err)
  local kind = type(err)
  if kind == "string" then return err end
  if kind == "number" then return tostring(err) end
  local ok, text = pcall(tostring, err)
  if ok then return text end
  return string.format("(an error object, a %s, whose __tostring failed: %s)", kind,
                       type(text) == "string" and text or type(text))
end
