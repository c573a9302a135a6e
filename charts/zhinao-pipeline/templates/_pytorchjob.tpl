{{/*
Return the pod template of one stage's replicas. Takes (dict "spec" "name" "stage").

CONTRACT: this mirrors operator/zhinao_k8s/render/pytorchjob.py (`pod_template`, `_env`,
`scratch_env`, `storage_env`, `_resources`) field for field, with the models' defaults for keys
left out. Helm cannot run the
Python renderer, so tests/charts/test_helm_pipeline_chart.py renders the same spec both ways and
fails when the two differ. Change both together.
*/}}
{{- define "zhinao-pipeline.podTemplate" -}}
{{- $spec := .spec }}
{{- $stage := .stage }}
{{- $sched := include "zhinao-pipeline.scheduling" . | fromJson }}
{{- $rdma := $sched.rdma }}
{{- $storage := default dict $spec.storage }}
{{- $metrics := default dict $spec.metrics }}
{{- $metricsOn := eq (include "zhinao-pipeline.get" (dict "map" $metrics "key" "enabled" "fallback" true)) "true" }}
{{- $metricsPort := int (include "zhinao-pipeline.get" (dict "map" $metrics "key" "port" "fallback" 9400)) }}
{{- $res := default dict $stage.resources }}
{{- $gpu := int (default 0 $res.gpu) }}
{{- $upstream := include "zhinao-pipeline.upstream" . | fromJsonArray }}
{{- $image := $stage.image | default $spec.image | default "ghcr.io/zhinao-k8s/trainer:0.1.0" }}
{{- $pullPolicy := default "IfNotPresent" $spec.imagePullPolicy }}
metadata:
  labels:
    {{- include "zhinao-pipeline.trainerLabels" . | nindent 4 }}
  {{- if $metricsOn }}
  annotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $metricsPort | quote }}
    prometheus.io/path: /metrics
  {{- else }}
  annotations: {}
  {{- end }}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    fsGroup: 1000
    seccompProfile:
      type: RuntimeDefault
  {{- if $upstream }}
  # Waits until the stages this one reads have succeeded (`kubectl apply` starts every stage at once).
  initContainers:
    - name: wait-inputs
      image: {{ $image | quote }}
      imagePullPolicy: {{ $pullPolicy }}
      command: ["python", "-m", "zhinao.wait_inputs"]
      env:
        - name: ZHINAO_STAGE_SPEC_FILE
          value: /etc/zhinao/stage.json
        - name: HOME
          value: /tmp
        {{- include "zhinao-pipeline.storageEnv" $storage | nindent 8 }}
      resources:
        {{- range $part := list "requests" "limits" }}
        {{ $part }}:
          cpu: 100m
          memory: 256Mi
        {{- end }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: ["ALL"]
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: stage-spec
          mountPath: /etc/zhinao
          readOnly: true
  {{- end }}
  {{- with $sched.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $sched.tolerations }}
  tolerations:
    {{- range . }}
    - {{- toYaml (merge (deepCopy .) (dict "operator" "Equal")) | nindent 6 }}
    {{- end }}
  {{- end }}
  {{- with $sched.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $sched.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $sched.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $sched.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  containers:
    # `pytorch`: the training operator finds the rendezvous port on the container of this name.
    - name: pytorch
      image: {{ $image | quote }}
      imagePullPolicy: {{ $pullPolicy }}
      command: ["torchrun"]
      args:
        - --master-addr=$(MASTER_ADDR)
        - --master-port=$(MASTER_PORT)
        # Restarts are Kubernetes' (restartPolicy, counted against backoffLimit), never torchrun's.
        - --max-restarts=0
        - -m
        - zhinao
      env:
        - name: ZHINAO_STAGE_SPEC_FILE
          value: /etc/zhinao/stage.json
        - name: ZHINAO_WORKDIR
          value: /scratch
        - name: HOME
          value: /tmp
        {{- if $metricsOn }}
        - name: ZHINAO_METRICS_PORT
          value: {{ $metricsPort | quote }}
        {{- end }}
        {{- include "zhinao-pipeline.storageEnv" $storage | nindent 8 }}
        {{- range $k, $v := $sched.ncclEnv }}
        - name: {{ $k }}
          value: {{ $v | quote }}
        {{- end }}
      ports:
        - name: pytorchjob-port
          containerPort: 23456
          protocol: TCP
        {{- if $metricsOn }}
        - name: metrics
          containerPort: {{ $metricsPort }}
          protocol: TCP
        {{- end }}
      {{- /* requests == limits: Guaranteed QoS, training pods are the last to be evicted. */}}
      resources:
        {{- range $part := list "requests" "limits" }}
        {{ $part }}:
          cpu: {{ default "2" $res.cpu | quote }}
          memory: {{ default "8Gi" $res.memory | quote }}
          {{- if $gpu }}
          nvidia.com/gpu: {{ $gpu | quote }}
          {{- end }}
          {{- with $rdma }}
          {{ default "rdma/rdma_shared_device_a" .resource }}: {{ default 1 .count | quote }}
          {{- end }}
        {{- end }}
      # The trainer writes its failure reason there; torchrun's own failures leave the log's tail.
      terminationMessagePolicy: FallbackToLogsOnError
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: ["ALL"]
          {{- if $rdma }}
          {{- /* RDMA pins memory for the NIC. */}}
          add: ["IPC_LOCK"]
          {{- end }}
      volumeMounts:
        - name: scratch
          mountPath: /scratch
        - name: tmp
          mountPath: /tmp
        - name: dshm
          mountPath: /dev/shm
        - name: stage-spec
          mountPath: /etc/zhinao
          readOnly: true
  volumes:
    - name: scratch
      emptyDir: {}
    - name: tmp
      emptyDir: {}
    # NCCL and dataloader workers need more shared memory than the 64Mi default.
    - name: dshm
      emptyDir:
        medium: Memory
    - name: stage-spec
      configMap:
        name: {{ printf "%s-%s-spec" .name $stage.name }}
{{- end }}

{{/* Return the stage spec every replica reads (render/pytorchjob.py `stage_runtime`) as JSON. */}}
{{- define "zhinao-pipeline.runtime" -}}
{{- $stage := .stage }}
{{- toJson (dict "pipeline" .name "stage" $stage.name "kind" $stage.kind "params" (default dict $stage.params)
      "inputs" (include "zhinao-pipeline.inputs" . | fromJson) "upstream" (include "zhinao-pipeline.upstream" . | fromJsonArray)
      "output" (include "zhinao-pipeline.output" .) "overwrite" false) }}
{{- end }}

{{/* Return the names of the stage's inputs that other stages produce, sorted, as a JSON list. */}}
{{- define "zhinao-pipeline.upstream" -}}
{{- $names := list }}
{{- range $key, $uri := (default dict .stage.inputs) }}
{{- if hasPrefix "stage://" $uri }}{{ $names = append $names $key }}{{ end }}
{{- end }}
{{- toJson (sortAlpha $names) }}
{{- end }}

{{/* Return the storage env (render/pytorchjob.py `storage_env`). Takes the storage map. */}}
{{- define "zhinao-pipeline.storageEnv" -}}
{{- with .endpoint }}
- name: ZHINAO_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .credentials }}
{{- $ref := .secretRef }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ default "AWS_ACCESS_KEY_ID" $ref.accessKeyIdKey | quote }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ default "AWS_SECRET_ACCESS_KEY" $ref.secretAccessKeyKey | quote }}
{{- end }}
{{- end }}

{{/*
Return a stage's effective scheduling as JSON (api/scheduling.py `effective_scheduling`): the
pipeline's `scheduling`, each key the stage's `scheduling` sets replacing it whole. Takes (dict "spec" "stage").
*/}}
{{- define "zhinao-pipeline.scheduling" -}}
{{- $sched := deepCopy (default dict .spec.scheduling) }}
{{- range $k, $v := (default dict .stage.scheduling) }}
{{- $_ := set $sched $k $v }}
{{- end }}
{{- toJson $sched }}
{{- end }}

{{/* Return the training pods' labels (render/names.py `labels`). Takes (dict "name" "stage"). */}}
{{- define "zhinao-pipeline.trainerLabels" -}}
app.kubernetes.io/name: zhinao-trainer
app.kubernetes.io/part-of: zhinao-k8s
app.kubernetes.io/managed-by: zhinao-k8s
app.kubernetes.io/component: {{ .stage.kind }}
zhinao.ai/pipeline: {{ .name }}
zhinao.ai/stage: {{ .stage.name }}
zhinao.ai/stage-kind: {{ .stage.kind }}
{{- end }}
