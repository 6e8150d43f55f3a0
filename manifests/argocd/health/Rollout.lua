local hs = observed(obj)
if hs ~= nil then return hs end
local s = obj.status
local phase = s.phase
local weight = s.canaryWeight or 0
if phase == "Waiting" then
  -- Declared before its first version exists (e.g. with the FineTuneSchedule that will hand it one): nothing is wrong
  -- and nothing is deployed, so it is Healthy; Progressing would hold sync waves and `argocd app wait --health` for days.
  return {status = "Healthy", message = explain(s, "Waiting for a first ModelVersion in spec.candidate; nothing is served yet")}
elseif phase == "Promoted" then
  local msg = "Promoted"
  if s.stableModelVersion ~= nil then msg = msg .. ": " .. s.stableModelVersion .. " serves 100%" end
  return {status = "Healthy", message = msg}
elseif phase == "Paused" then
  return {status = "Suspended", message = explain(s, "Paused at canary weight " .. tostring(weight) .. "%; promote or abort")}
elseif phase == "RolledBack" then
  return {status = "Degraded", message = explain(s, "Rolled back to the stable ModelVersion")}
elseif phase == "Aborted" then
  return {status = "Degraded", message = explain(s, "Aborted; all traffic on the stable ModelVersion")}
elseif phase == "Degraded" then
  return {status = "Degraded", message = explain(s, "Degraded")}
elseif phase == "Progressing" then
  local msg = "Canary at " .. tostring(weight) .. "%"
  if s.currentStepIndex ~= nil then msg = msg .. ", step " .. tostring(s.currentStepIndex) end
  if s.waitingFor ~= nil and s.waitingFor ~= "" then msg = msg .. ": " .. s.waitingFor end
  return {status = "Progressing", message = msg}
end
return {status = "Unknown", message = "Unknown Rollout phase " .. tostring(phase)}
