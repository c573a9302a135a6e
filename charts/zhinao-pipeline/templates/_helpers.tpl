{{/* Return the pipeline name: `name`, else the release name. At most 40 characters (validateConfig). */}}
{{- define "zhinao-pipeline.name" -}}
{{- default .Release.Name .Values.name }}
{{- end }}

{{/* Return the labels of every object the chart renders itself. */}}
{{- define "zhinao-pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zhinao-k8s
zhinao.ai/pipeline: {{ include "zhinao-pipeline.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Return the URL of the MinIO Service named by `minio.*`. */}}
{{- define "zhinao-pipeline.minioEndpoint" -}}
{{- printf "http://%s.%s.svc:%d" .Values.minio.service .Values.minio.namespace (int .Values.minio.port) }}
{{- end }}

{{/* Return the effective TrainingPipeline spec as YAML: `pipeline` with the MinIO endpoint wired in. */}}
{{- define "zhinao-pipeline.spec" -}}
{{- $spec := deepCopy .Values.pipeline }}
{{- if .Values.minio.enabled }}
{{- $storage := deepCopy (default dict $spec.storage) }}
{{- $_ := set $storage "endpoint" (include "zhinao-pipeline.minioEndpoint" .) }}
{{- $_ = set $spec "storage" $storage }}
{{- end }}
{{- toYaml $spec }}
{{- end }}

{{/* Return the storage root URI without trailing slashes (PipelineSpec default: file://./runs). */}}
{{- define "zhinao-pipeline.storageUri" -}}
{{- $storage := default dict .spec.storage }}
{{- regexReplaceAll "/+$" (default "file://./runs" $storage.uri) "" }}
{{- end }}

{{/* Return where a stage writes: its `output`, else `<storage.uri>/<pipeline>/<stage>`. Takes (dict "spec" "name" "stage"). */}}
{{- define "zhinao-pipeline.output" -}}
{{- if .stage.output }}
{{- .stage.output }}
{{- else }}
{{- printf "%s/%s/%s" (include "zhinao-pipeline.storageUri" .) .name .stage.name }}
{{- end }}
{{- end }}

{{/* Return a stage's inputs as JSON, `stage://<name>` replaced by that stage's output. Takes (dict "spec" "name" "stage"). */}}
{{- define "zhinao-pipeline.inputs" -}}
{{- $ctx := . }}
{{- $resolved := dict }}
{{- range $key, $uri := (default dict .stage.inputs) }}
{{- if hasPrefix "stage://" $uri }}
{{- $target := trimPrefix "stage://" $uri }}
{{- range $ctx.spec.stages }}
{{- if eq .name $target }}
{{- $_ := set $resolved $key (include "zhinao-pipeline.output" (dict "spec" $ctx.spec "name" $ctx.name "stage" .)) }}
{{- end }}
{{- end }}
{{- else }}
{{- $_ := set $resolved $key $uri }}
{{- end }}
{{- end }}
{{- toJson $resolved }}
{{- end }}

{{/* Return `key` of a map, or `fallback` when the key is absent (unlike `default`, keeps false and 0). */}}
{{- define "zhinao-pipeline.get" -}}
{{- if hasKey .map .key }}{{ index .map .key }}{{ else }}{{ .fallback }}{{ end }}
{{- end }}

{{/* Fail on values the schema cannot express; the same rules as the TrainingPipeline models. */}}
{{- define "zhinao-pipeline.validateConfig" -}}
{{- $name := include "zhinao-pipeline.name" . }}
{{- $dns := "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" }}
{{- if or (gt (len $name) 40) (not (regexMatch $dns $name)) }}
{{- fail (printf "pipeline name %q must be a DNS label of at most 40 characters (jobs are <name>-<stage>): set `name`" $name) }}
{{- end }}
{{- $spec := include "zhinao-pipeline.spec" . | fromYaml }}
{{- $seen := list }}
{{- range $spec.stages }}
{{- if not (regexMatch $dns .name) }}
{{- fail (printf "stage name %q must be a DNS label (lowercase letters, digits and '-')" .name) }}
{{- end }}
{{- if has .name $seen }}
{{- fail (printf "stage name %q is used twice" .name) }}
{{- end }}
{{- $stage := . }}
{{- range $key, $uri := (default dict .inputs) }}
{{- if and (hasPrefix "stage://" $uri) (not (has (trimPrefix "stage://" $uri) $seen)) }}
{{- fail (printf "stage %q input %q refers to %q, which is not an earlier stage" $stage.name $key $uri) }}
{{- end }}
{{- end }}
{{- $seen = append $seen .name }}
{{- end }}
{{- $storage := default dict $spec.storage }}
{{- if and (hasPrefix "s3://" (default "" $storage.uri)) (not $storage.endpoint) }}
{{- fail "pipeline.storage.endpoint is required when pipeline.storage.uri is s3:// (or set minio.enabled=true)" }}
{{- end }}
{{- if .Values.operator.enabled }}
{{- if .Values.jobs.stages }}
{{- fail "jobs.stages only applies with operator.enabled=false: the operator starts each stage itself" }}
{{- end }}
{{- else }}
{{- if and (gt (len $spec.stages) 1) (not .Values.jobs.stages) }}
{{- fail (printf "operator.enabled=false with %d stages: list the stages to create in jobs.stages (Helm cannot wait for one stage to succeed before creating the next), e.g. --set 'jobs.stages={%s}'" (len $spec.stages) (index $spec.stages 0).name) }}
{{- end }}
{{- range .Values.jobs.stages }}
{{- if not (has . $seen) }}
{{- fail (printf "jobs.stages names %q, which is not a stage of the pipeline" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- $metrics := default dict $spec.metrics }}
{{- if and .Values.monitoring.podMonitor.enabled (eq (include "zhinao-pipeline.get" (dict "map" $metrics "key" "enabled" "fallback" true)) "false") }}
{{- fail "monitoring.podMonitor needs pipeline.metrics.enabled=true: the training pods serve no /metrics otherwise" }}
{{- end }}
{{- end }}
