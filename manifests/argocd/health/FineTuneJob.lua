local hs = observed(obj)
if hs ~= nil then return hs end
local s = obj.status
local phase = s.phase
if phase == "Succeeded" then
  local msg = "Training and evaluation succeeded"
  if s.verdict ~= nil then msg = msg .. "; gate verdict " .. s.verdict end
  if s.children ~= nil and s.children.modelVersion ~= nil then msg = msg .. "; ModelVersion " .. s.children.modelVersion end
  return {status = "Healthy", message = msg}
elseif phase == "Failed" then
  return {status = "Degraded", message = explain(s, "FineTuneJob failed")}
elseif phase == "Suspended" then
  return {status = "Suspended", message = explain(s, "FineTuneJob is suspended (spec.suspend)")}
elseif phase == "Pending" or phase == "ValidatingData" or phase == "Training" or phase == "Evaluating" or phase == "Exporting" then
  local msg = phase
  if phase == "Training" and s.progress ~= nil and s.progress.step ~= nil and s.progress.totalSteps ~= nil then
    msg = msg .. ": step " .. tostring(s.progress.step) .. "/" .. tostring(s.progress.totalSteps)
  end
  local failing = condition(s, "Failed")
  if s.message ~= nil and s.message ~= "" then msg = msg .. " (" .. s.message .. ")" end
  if failing ~= nil and failing.status == "True" then
    return {status = "Degraded", message = explain(s, "FineTuneJob failed")}
  end
  return {status = "Progressing", message = msg}
end
return {status = "Unknown", message = "Unknown FineTuneJob phase " .. tostring(phase)}
