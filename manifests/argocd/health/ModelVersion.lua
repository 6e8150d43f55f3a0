local hs = observed(obj)
if hs ~= nil then return hs end
local s = obj.status
local phase = s.phase
if phase == "Ready" then
  return {status = "Healthy", message = "Registered; evaluation gates passed"}
elseif phase == "Serving" then
  local msg = "Serving"
  if s.rollout ~= nil then msg = msg .. " in Rollout " .. s.rollout end
  return {status = "Healthy", message = msg}
elseif phase == "Retired" then
  return {status = "Healthy", message = explain(s, "Retired: replaced by a newer version")}
elseif phase == "Rejected" then
  return {status = "Degraded", message = explain(s, "Rejected by the evaluation gates")}
elseif phase == "RolledBack" then
  return {status = "Degraded", message = explain(s, "Rolled back: the canary analysis failed")}
elseif phase == "Pending" then
  return {status = "Progressing", message = explain(s, "Pending")}
end
return {status = "Unknown", message = "Unknown ModelVersion phase " .. tostring(phase)}
