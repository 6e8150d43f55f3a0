-- Shared by every tuneloop health check (generate.py prepends it to each kind's script).
-- Argo CD sets the global `obj`; a check returns {status = ..., message = ...}.
local function condition(status, ctype)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then return c end
  end
  return nil
end

-- The most useful human text: status.message, else the message of a False/failure condition.
local function explain(status, fallback)
  if status.message ~= nil and status.message ~= "" then return status.message end
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if (c.status == "False" or c.type == "Failed") and c.message ~= nil and c.message ~= "" then
        return c.type .. ": " .. c.message
      end
    end
  end
  return fallback
end

-- Progressing until the operator has written status for the current spec generation.
local function observed(o)
  local status = o.status
  if status == nil or status.phase == nil then
    return {status = "Progressing", message = "Waiting for the tuneloop operator to report status"}
  end
  local generation = o.metadata and o.metadata.generation
  if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
    return {status = "Progressing", message = "Waiting for the tuneloop operator to observe generation " .. tostring(generation)}
  end
  return nil
end
