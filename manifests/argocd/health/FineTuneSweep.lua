local hs = observed(obj)
if hs ~= nil then return hs end
local s = obj.status
local phase = s.phase
if phase == "Succeeded" then
  local msg = "Sweep finished"
  if s.bestTrial ~= nil then msg = msg .. "; best trial " .. s.bestTrial .. " (" .. tostring(s.bestValue) .. ")" end
  if s.best ~= nil and s.best.modelVersion ~= nil then msg = msg .. "; ModelVersion " .. s.best.modelVersion end
  return {status = "Healthy", message = msg}
elseif phase == "Failed" then
  return {status = "Degraded", message = explain(s, "The sweep failed")}
elseif phase == "Suspended" then
  return {status = "Suspended", message = explain(s, "Suspended: no new trials start")}
elseif phase == "Running" or phase == "Evaluating" then
  local done = (s.trialsComplete or 0) + (s.trialsPruned or 0) + (s.trialsFailed or 0)
  local msg = phase .. ": " .. tostring(done) .. " trial(s) ended, " .. tostring(s.trialsRunning or 0) .. " running"
  if s.bestTrial ~= nil then msg = msg .. "; best " .. s.bestTrial .. " (" .. tostring(s.bestValue) .. ")" end
  return {status = "Progressing", message = msg}
end
return {status = "Unknown", message = "Unknown FineTuneSweep phase " .. tostring(phase)}
