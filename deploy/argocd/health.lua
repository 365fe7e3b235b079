-- Argo CD health of a sift.dev/v1alpha1 SelectionRun, from the conditions the operator
-- writes (operator/sift_operator/conditions.py). Lua 5.1, as Argo CD runs it.
-- Tested in tests/packaging/test_argocd_health.py; argocd-cm.yaml is generated from it.
local hs = {}

local function condition(status, type_)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if message == "" then
    return reason
  end
  return reason .. ": " .. message
end

local status = obj.status
local spec = obj.spec or {}
local generation = (obj.metadata or {}).generation

if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sift operator to accept the run"
  return hs
end

-- Succeeded and Failed are final: the operator never reverses them.
local failed = condition(status, "Failed")
if is_true(failed) then
  hs.status = "Degraded"
  hs.message = text(failed, "Failed")
  return hs
end
local succeeded = condition(status, "Succeeded")
if is_true(succeeded) then
  hs.status = "Healthy"
  local reported = condition(status, "Reported")
  hs.message = text(succeeded, "Succeeded")
  if reported ~= nil and reported.status ~= "True" and reported.reason ~= "Disabled" then
    hs.message = hs.message .. " (report " .. text(reported, "") .. ")"
  end
  return hs
end

if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sift operator to observe generation " .. tostring(generation)
  return hs
end

local accepted = condition(status, "Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = text(accepted, "NotAccepted")
  return hs
end

local queued = condition(status, "Queued")
if spec.suspend == true or (is_true(queued) and queued.reason == "Suspended") then
  hs.status = "Suspended"
  hs.message = text(queued, "Suspended: spec.suspend is true")
  return hs
end

if is_true(queued) then
  hs.status = "Progressing"
  hs.message = text(queued, "Queued")
  return hs
end

local running = condition(status, "Running")
hs.status = "Progressing"
hs.message = text(running, "Accepted")
return hs
